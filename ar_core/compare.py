"""Paired comparison of two checkpoints on the same images, with McNemar's exact test.

    python -m ar_core.compare --a checkpoints/cifar10-wrn16x4-ad3aw4.safetensors \
        --b checkpoints/cifar10-wrn16x4-baseline.safetensors --data ~/data/cifar10 --validation-split

Two accuracies measured on the same images are not independent samples: what decides between the
models is the images only one of them gets right. McNemar's test asks whether those two counts
could come from a fair coin (exact binomial, two-sided), which a difference of accuracies alone
cannot tell.

Several pairs (one per seed: ``--a ATT0 ATT1 --b BASE0 BASE1``) are compared pair by pair, and when
every A is an attention model and every B a baseline, the paper's claim is read by the rule fixed
before the v2 runs ended (:func:`claim_verdict`).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
import torch

from . import data as D
from .checkpoint import CheckpointError, load_checkpoint
from .precision import device_arg, pick_device
from .tta import NAMES as TTA_NAMES


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(a count as uneven as this | each discordant image is a coin flip)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    # the binomial tail in log space (n can be in the thousands)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(l - top) for l in logs))


def paired(correct_a: torch.Tensor, correct_b: torch.Tensor) -> dict[str, Any]:
    """Counts and test for two boolean vectors of per-image correctness over the same images."""
    a, b = correct_a.bool(), correct_b.bool()
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} and {len(b)} results: the comparison needs the same images")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return {"n": len(a), "accuracy_a": float(a.double().mean()), "accuracy_b": float(b.double().mean()),
            "both_right": int((a & b).sum()), "both_wrong": int((~a & ~b).sum()),
            "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)}


CLAIM_ALPHA = 0.05


def claim_verdict(pairs: list[dict[str, Any]]) -> str:
    """The paper's claim (attention beats its baseline) read over the seeds of one data set: supported when
    the attention model (A) is ahead on every pair and at least one pair has McNemar p < 0.05; ahead on
    every pair without that is the paper's direction, unresolved; anything else is not supported."""
    if not pairs:
        raise ValueError("no pairs to read the claim from")
    ahead = all(p["accuracy_a"] > p["accuracy_b"] for p in pairs)
    if ahead and any(p["mcnemar_p"] < CLAIM_ALPHA for p in pairs):
        return "supported"
    if ahead:
        return "the paper's direction, not resolved by these images"
    return "not supported here"


def disagreements(labels, baseline, attentive) -> dict[str, np.ndarray]:
    """Indices of the images on which two models' answers differ: exactly one right, or both wrong differently.

    Arguments are per-image arrays (true labels and each model's answer) over the same images.
    """
    labels, baseline, attentive = (np.asarray(v) for v in (labels, baseline, attentive))
    b_ok, a_ok = baseline == labels, attentive == labels
    return {"only the attention model right": np.nonzero(a_ok & ~b_ok)[0],
            "only the baseline right": np.nonzero(b_ok & ~a_ok)[0],
            "both wrong, different answers": np.nonzero(~a_ok & ~b_ok & (baseline != attentive))[0]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, nargs="+", help="first checkpoint (.safetensors); one per pair")
    p.add_argument("--b", required=True, nargs="+", help="second checkpoint, paired with --a by position")
    p.add_argument("--data", required=True, help="ImageFolder tree with both models' classes")
    p.add_argument("--validation-split", action="store_true",
                   help="compare on the validation split both checkpoints record (carved from --data, the "
                        "training folder); both must record the same split")
    p.add_argument("--tta", choices=["auto", *TTA_NAMES], default="auto",
                   help="test-time augmentation (auto: each checkpoint's own)")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="auto: bf16 on CPUs with native bf16, fp16 on CUDA; on: bf16 on any CPU; off: float32 "
                        "(as the app's data-set page)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (as README's figures were measured), auto, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-cache", action="store_true",
                   help="predict again instead of reading (and filling) the per-image cache analyze also uses")
    return p.parse_args(argv)


def compare_pair(path_a: str, path_b: str, args: argparse.Namespace) -> dict[str, Any]:
    """One pair on the same images: each model's answers (from analyze's cache unless --no-cache), then
    the paired counts and McNemar's test."""
    from .analyze import collect_cached, predictions_cache
    from .evaluate import ClassMismatchError, align_labels, validation_split
    from .precision import autocast_for
    from .tta import resolve as resolve_tta

    try:
        (model_a, meta_a), (model_b, meta_b) = (load_checkpoint(p, device=pick_device(args.device))
                                                for p in (path_a, path_b))
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    if sorted(meta_a.get("classes", [])) != sorted(meta_b.get("classes", [])):
        raise SystemExit("the two checkpoints have different classes; they cannot be compared image by image")
    size, size_b = (int(m.get("image_size", 32)) for m in (meta_a, meta_b))
    if size_b != size:
        raise SystemExit(f"the two checkpoints take {size}x{size} and {size_b}x{size_b} images; they cannot be "
                         f"compared on the same model inputs")
    try:
        dataset = D.load_image_folder(args.data, size)  # decoded as each model's own evaluation decodes it
    except (OSError, ValueError) as e:  # no folder, no images, an unusable file
        raise SystemExit(f"error: cannot load {args.data}: {e}") from e
    if args.validation_split:
        split_a, split_b = meta_a.get("validation_split") or {}, meta_b.get("validation_split") or {}
        # the digests name the training images and the split itself; older checkpoints record neither
        keys = ["size", "seed", "train_size", *(k for k in ("train_digest", "index_digest")
                                                if split_a.get(k) and split_b.get(k))]
        if {k: split_a.get(k) for k in keys} != {k: split_b.get(k) for k in keys}:
            raise SystemExit("the two checkpoints record different validation splits; compare them on a "
                             "held-out folder instead")
        try:
            dataset = validation_split(dataset, meta_a)
        except ValueError as e:  # no split recorded, or another folder than the training one
            raise SystemExit(f"error: {e}") from e
    correct = []
    for model, meta in ((model_a, meta_a), (model_b, meta_b)):
        try:  # the labels in this model's own class order: the two may list the same classes differently
            dataset = align_labels(dataset, meta["classes"], subset=True)
        except ClassMismatchError as e:
            raise SystemExit(f"error: {e}") from e
        model.eval()  # load_checkpoint gives it in channels_last, the evaluator's layout
        aug = resolve_tta(None if args.tta == "auto" else args.tta, meta)
        _, precision = autocast_for(next(model.parameters()).device, args.amp)
        cache = None if args.no_cache else predictions_cache(meta, dataset, aug, precision)
        cat = collect_cached(model, dataset, meta, cache, tta=aug, amp=args.amp)  # resumable: saved chunk by chunk
        correct.append(cat["pred"] == dataset.labels)
    attention_vs_baseline = bool(model_a.attend) and not model_b.attend
    return {"a": path_a, "b": path_b, **paired(*correct), "attention_vs_baseline": attention_vs_baseline}


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if len(args.a) != len(args.b):
        raise SystemExit(f"{len(args.a)} checkpoints for --a and {len(args.b)} for --b: give one B for each A")
    pairs = [compare_pair(a, b, args) for a, b in zip(args.a, args.b)]
    claim = claim_verdict(pairs) if all(p["attention_vs_baseline"] for p in pairs) else None
    result = {**pairs[0], "claim": claim} if len(pairs) == 1 else {"pairs": pairs, "claim": claim}
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    for r in pairs:
        print(f"{r['n']} images\n"
              f"  A {r['a']}: {100 * r['accuracy_a']:.2f} %\n"
              f"  B {r['b']}: {100 * r['accuracy_b']:.2f} %\n"
              f"  only A right: {r['only_a_right']}, only B right: {r['only_b_right']}, "
              f"both right: {r['both_right']}, both wrong: {r['both_wrong']}\n"
              f"  McNemar's exact test: p = {r['mcnemar_p']:.4g}")
    if claim is not None:
        print(f"the paper's claim (A, with attention, beats B, its baseline) over {len(pairs)} pair"
              f"{'s' if len(pairs) > 1 else ''}: {claim} (ahead on every pair, and p < {CLAIM_ALPHA} on at "
              f"least one, to count as supported)")
    return result


if __name__ == "__main__":
    main()
