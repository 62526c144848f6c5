"""Evaluate a checkpoint on a labelled image set: accuracy, calibration, and what attention did.

    python -m ar_core.evaluate --checkpoint checkpoints/cifar10-wrn16x4-ad3aw4.safetensors --data DIR
    python -m ar_core.evaluate --checkpoint ... --torchvision cifar10 --root ~/data [--json]
    python -m ar_core.evaluate --checkpoint ... --data TRAIN_DIR --validation-split

DIR is an ImageFolder tree (``DIR/<class>/<image>``) whose class folders are named as the
checkpoint's classes. Besides top-1/top-5 accuracy, NLL, calibration error, per-class accuracy and
the confusion matrix, attention models get the accuracy of every source alone, how often fusion
rectified (or spoiled) the network's own answer, and the statistics of the global and confidence
gates. ``evaluate()`` is the computation alone, for the app and for analysis scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from . import data as D
from .checkpoint import CheckpointError, load_checkpoint
from .inference import outcome_masks, preprocess
from .tta import NAMES as TTA_NAMES
from .tta import TTA, TTALike
from .tta import resolve as resolve_tta
from .model import AttendAndRectify
from .precision import autocast_for, device_arg, pick_device

FUSED = "fused"  # key of the fused output among the per-source accuracies


class ClassMismatchError(ValueError):
    """The data's class names are not the checkpoint's; the message names the differences."""


# ---------------------------------------------------------------- metric helpers (pure functions)

def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(M, M) int64 counts; row = true class, column = predicted class."""
    pred, labels = pred.long().flatten(), labels.long().flatten()
    flat = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the true class is among the ``k`` highest scores (all classes when k >= M)."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15):
    """Per equal-width confidence bin (lo, hi]: (count, mean confidence, accuracy); empty bins give 0."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    idx = torch.bucketize(confidence.double(), edges[1:-1])  # bin b holds (edges[b], edges[b+1]]
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.bincount(idx, weights=confidence.double(), minlength=bins)
    hit_sum = torch.bincount(idx, weights=correct.double(), minlength=bins)
    safe = count.clamp(min=1)
    return count, conf_sum / safe, hit_sum / safe


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: Σ_b (n_b / N) · |accuracy_b − mean confidence_b| over equal-width bins of max probability."""
    confidence, pred = probs.max(dim=1)
    return ece_from_confidence(confidence, pred == labels, bins)


def ece_from_confidence(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE from each prediction's confidence and correctness (what ``evaluate`` keeps per image)."""
    if len(confidence) == 0:
        raise ValueError("ECE of an empty set")
    count, conf, acc = calibration_bins(confidence, correct, bins)
    return float((count / count.sum() * (acc - conf).abs()).sum())


def mean_std(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-column mean and population std of an (N, C) tensor; population so that N = 1 is defined."""
    x = x.double()
    return x.mean(dim=0).tolist(), x.std(dim=0, correction=0).tolist()


# ---------------------------------------------------------------- classes

def align_labels(dataset: D.TensorDataset, classes: Sequence[str], subset: bool = False) -> D.TensorDataset:
    """The dataset with labels renumbered to ``classes`` (the checkpoint's order), matched by name.

    A different order (e.g. a checkpoint that lists CIFAR classes in another order) is renumbered
    rather than misread. ``subset``: the data may hold only some of the classes (a folder with just
    ``cat/`` and ``dog/``); the result still lists all of ``classes``. A class the checkpoint does
    not know is always an error.
    """
    classes = list(classes)
    have, want = set(dataset.classes), set(classes)
    missing, extra = sorted(want - have), sorted(have - want)
    duplicates = len(have) != len(dataset.classes) or len(want) != len(classes)
    if extra or duplicates or (missing and not subset):
        parts = []
        if missing and not subset:
            parts.append(f"missing (in the checkpoint, not in the data): {', '.join(missing)}")
        if extra:
            parts.append(f"extra (in the data, unknown to the checkpoint): {', '.join(extra)}")
        if duplicates:
            parts.append("duplicate class names")
        raise ClassMismatchError(f"the data's classes do not match the checkpoint's {len(classes)} classes; "
                                 + "; ".join(parts))
    if list(dataset.classes) == classes:
        return dataset
    index = {name: i for i, name in enumerate(classes)}
    remap = torch.tensor([index[name] for name in dataset.classes], dtype=torch.int64)
    return D.TensorDataset(dataset.images, remap[dataset.labels], classes)


def checkpoint_classes(meta: dict[str, Any], n: int, dataset: D.TensorDataset | None = None) -> list[str]:
    """The names of a checkpoint's ``n`` classes, in its output order (numbered without names, as
    inference.inspect names them). Without names it reads a data set's class folders by position, which
    only holds when their count is its own: any other count is a ClassMismatchError that says so (by
    position, labels past its outputs would fail on a shape later)."""
    if meta.get("classes"):
        return list(meta["classes"])
    if dataset is None:
        return [str(i) for i in range(n)]
    if len(dataset.classes) != n:
        raise ClassMismatchError(f"the checkpoint names no classes, so its {n} outputs are read as the data's "
                                 f"class folders in sorted order, but the data has {len(dataset.classes)}")
    return list(dataset.classes)


# ---------------------------------------------------------------- evaluation

@torch.inference_mode()
def collect(model: AttendAndRectify, images: torch.Tensor, labels: torch.Tensor, meta: dict[str, Any],
            batch_size: int = 500, device: torch.device | None = None, amp: str = "auto",
            progress=None, tta: TTALike | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Per-image results of one pass over uint8 ``images``: (arrays by name, precision used).

    ``tta``: the test-time augmentation, as the app applies it (None: the checkpoint's own).

    Arrays: pred, confidence, top5, nll, net_pred, and for attention models pred/<layer>,
    conf_gates/<layer>, head_pred/<layer> (each head's top class), global_gates, and what the
    gates' tanh received: gate_pre_tanh/<layer> and global_pre_tanh.
    ``progress(n)`` is called with the number of images done after each batch.
    """
    device = device or next(model.parameters()).device
    autocast, precision = autocast_for(device, amp)
    aug = resolve_tta(tta, meta)
    keep: dict[str, list[torch.Tensor]] = {}

    def add(name: str, t: torch.Tensor):
        keep.setdefault(name, []).append(t.detach().cpu())

    for i in range(0, len(labels), batch_size):
        x = preprocess(images[i:i + batch_size], meta)  # the app's normalisation, defaults included
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size].to(device, non_blocking=True)
        with autocast():
            trace = model.trace(x, flip=aug.flip, shift=aug.shift)
        output = trace.output.float()
        logp = F.log_softmax(output, dim=1)
        confidence, pred = logp.max(dim=1)
        add("pred", pred)
        add("confidence", confidence.exp())
        add("top5", topk_correct(output, y, 5))
        add("nll", -logp.gather(1, y[:, None]).squeeze(1).double())
        add("net_pred", trace.net_output.argmax(dim=1))
        for layer in trace.layers:
            add(f"pred/{layer.name}", layer.hypothesis.argmax(dim=1))
            add(f"conf_gates/{layer.name}", layer.confidence_gates.float())
            add(f"head_pred/{layer.name}", layer.head_hypotheses.argmax(dim=2))
            add(f"gate_pre_tanh/{layer.name}", layer.gate_pre_tanh.float())
        if trace.layers:
            add("global_gates", trace.global_gates.float())
            add("global_pre_tanh", trace.global_pre_tanh.float())
        if progress is not None:
            progress(min(len(labels), i + batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {k: torch.cat(v) for k, v in keep.items()}, precision


def summarize(cat: dict[str, torch.Tensor], labels: torch.Tensor, classes: Sequence[str],
              sources: Sequence[str]) -> dict[str, Any]:
    """The evaluator's metrics from the per-image arrays of :func:`collect`."""
    num_classes = len(classes)
    n = len(labels)
    pred = cat["pred"]
    correct = pred == labels
    cm = confusion_matrix(pred, labels, num_classes)
    per_class = cm.diag().double() / cm.sum(dim=1).double()
    result: dict[str, Any] = {
        "n": n,
        "accuracy": float(correct.double().mean()),
        "top5_accuracy": float(cat["top5"].double().mean()),
        "nll": float(cat["nll"].mean()),
        "ece": ece_from_confidence(cat["confidence"], correct, 15),
        "per_class_accuracy": {c: (None if cm[j].sum() == 0 else float(per_class[j])) for j, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "net_accuracy": float((cat["net_pred"] == labels).double().mean()),
    }
    layers = [s for s in sources if s != "network"]
    if layers:
        source_pred = {name: cat[f"pred/{name}"] for name in layers}
        source_pred["network"] = cat["net_pred"]
        outcome = outcome_masks(labels, cat["pred"], cat["net_pred"])
        result["source_accuracy"] = {**{s: float((source_pred[s] == labels).double().mean()) for s in sources},
                                     FUSED: result["accuracy"]}
        result["rectified"] = int(outcome["rectified"].sum())
        result["spoiled"] = int(outcome["spoiled"].sum())
        g_mean, g_std = mean_std(cat["global_gates"])
        result["global_gates"] = {s: {"mean": m, "std": sd} for s, m, sd in zip(sources, g_mean, g_std)}
        result["confidence_gates"] = {}
        for name in layers:
            c_mean, c_std = mean_std(cat[f"conf_gates/{name}"])
            result["confidence_gates"][name] = {"mean": c_mean, "std": c_std}
    return result


def evaluate(model: AttendAndRectify, dataset: D.TensorDataset, meta: dict[str, Any], batch_size: int = 500,
             device: str | torch.device | None = None, progress: bool = False, amp: str = "auto",
             tta: TTALike | None = None) -> dict[str, Any]:
    """All metrics of ``model`` on ``dataset`` (uint8 images, labels), as a JSON-ready dict.

    ``tta``: the test-time augmentation's name (None: the checkpoint's own, as in the app).

    Labels are renumbered to ``meta["classes"]`` by name; the data may hold only some of the classes (their
    per-class figures are None), and a class the checkpoint does not know raises ClassMismatchError.
    The model is put on ``device`` (default: where it is) in channels_last memory format, in place,
    and evaluated in eval mode; its training flag is restored afterwards.
    """
    classes = checkpoint_classes(meta, model.num_classes, dataset)
    if len(classes) != model.num_classes:
        raise ClassMismatchError(f"{len(classes)} class names for a {model.num_classes}-class model")
    dataset = align_labels(dataset, classes, subset=True)  # a folder may hold some of the classes only
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset holds no images")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device=device, memory_format=torch.channels_last).eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc="evaluate", file=sys.stderr, dynamic_ncols=True)
    aug = resolve_tta(tta, meta)
    t0 = time.perf_counter()
    try:
        cat, precision = collect(model, dataset.images, dataset.labels, meta, batch_size, device, amp,
                                 progress=(lambda done: bar.update(done - bar.n)) if bar is not None else None,
                                 tta=aug)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - t0
    result = summarize(cat, dataset.labels, classes, model.sources)
    result.update({"test_time_augmentation": aug.name,
                   "precision": precision, "device": str(device), "batch_size": batch_size,
                   "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 1)})
    return result


def validation_split(dataset: D.TensorDataset, meta: dict[str, Any]) -> D.TensorDataset:
    """The held-out images of a training set, as the trainer carved them (size and seed from ``meta``).

    ``dataset`` is the whole training folder as loaded (sorted paths, folder class order). When the
    checkpoint records digests of the training images' content and of its split, a folder whose
    images, labels, classes or order differ is refused: carving it would give another split, one
    that may overlap the images the model was trained on. Older checkpoints record only size and
    seed; their split is checked by size alone (with a warning).
    """
    split = meta.get("validation_split") or {}
    if not split.get("size"):
        raise ValueError("the checkpoint records no validation split; evaluate on a held-out folder instead")
    # "size" is what the split was asked for: per-class rounding can carve a few images more or less
    _, val_index = D.stratified_split(dataset.labels, split["size"], split["seed"])
    if split.get("train_size") is not None and split["train_size"] + len(val_index) != len(dataset):
        raise ValueError(f"the checkpoint was trained on {split['train_size'] + len(val_index)} images, this "
                         f"folder holds {len(dataset)}: it is not the same training set")
    if split.get("train_digest"):
        if D.content_digest(dataset) != split["train_digest"]:
            raise ValueError("this folder's images, labels or class folders differ from the training set the "
                             "checkpoint recorded (content digest mismatch), so the recorded validation split "
                             "cannot be carved from it. Use the training folder exactly as it was: the same "
                             "files, in class sub-folders of the same names (see README, 'Reproducing the "
                             "validation split')")
    else:
        warnings.warn("the checkpoint records no digest of its training images: the split is carved by size and "
                      "seed only, and is the recorded one only if this folder holds the same images under the "
                      "same sorted paths", stacklevel=2)
    if split.get("index_digest") and D.index_digest(val_index) != split["index_digest"]:
        raise ValueError("the split carved from this folder is not the one the checkpoint recorded (index digest "
                         "mismatch): the split code or its seed changed since training")
    return dataset.subset(val_index)


# ---------------------------------------------------------------- report

def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:6.2f}"


def format_report(r: dict[str, Any], title: str = "") -> str:
    """The human-readable summary: a compact table; the confusion matrix only for M <= 20."""
    lines = []
    if title:
        lines.append(title)
    name = r.get("test_time_augmentation") or "none"
    tta = f", test-time augmentation {name} ({TTA.parse(name).views} views)" if name != "none" else ""
    lines.append(f"{r['n']} images in {r['seconds']:.1f} s ({r['images_per_s']:.0f} images/s, {r['device']}, "
                 f"{r['precision']}{tta})")
    lines.append(f"accuracy {_pct(r['accuracy'])} %   top-5 {_pct(r['top5_accuracy'])} %   "
                 f"NLL {r['nll']:.4f}   ECE {_pct(r['ece'])} %")
    if "source_accuracy" in r:
        lines.append("")
        lines.append(f"{'source':<12} {'accuracy %':>10} {'global gate mean':>17} {'std':>7}")
        for s, acc in r["source_accuracy"].items():
            g = r["global_gates"].get(s)
            gate = f"{g['mean']:17.3f} {g['std']:7.3f}" if g else f"{'':>17} {'':>7}"
            lines.append(f"{s:<12} {_pct(acc):>10} {gate}")
        net_wrong = r["n"] - round(r["source_accuracy"]["network"] * r["n"])
        lines.append(f"rectified {r['rectified']} (network wrong -> fused right, of {net_wrong} network errors); "
                     f"spoiled {r['spoiled']} (network right -> fused wrong)")
        lines.append("")
        lines.append("confidence gates per head (mean ± std)")
        for layer, g in r["confidence_gates"].items():
            heads = "  ".join(f"{m:.3f}±{sd:.3f}" for m, sd in zip(g["mean"], g["std"]))
            lines.append(f"  {layer:<10} {heads}")
    lines.append("")
    classes = r["classes"]
    width = max(8, *(len(c) for c in classes))
    counts = [sum(row) for row in r["confusion_matrix"]]
    lines.append(f"{'class':<{width}} {'accuracy %':>10} {'images':>7}")
    for c, k in zip(classes, counts):
        lines.append(f"{c:<{width}} {_pct(r['per_class_accuracy'][c]):>10} {k:>7}")
    if len(classes) <= 20:
        lines.append("")
        lines.append("confusion matrix (rows: true class, columns: predicted, in the order above)")
        cell = max(4, len(str(max(max(row) for row in r["confusion_matrix"]))) + 1)
        lines.append(f"{'':<{width}} " + "".join(f"{j:>{cell}}" for j in range(len(classes))))
        for j, (c, row) in enumerate(zip(classes, r["confusion_matrix"])):
            lines.append(f"{c[:width]:<{width}} " + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint (or a shipped checkpoint's name)")
    p.add_argument("--data", help="ImageFolder tree DIR/<class>/<image>, class folders named as the checkpoint's")
    p.add_argument("--torchvision", choices=["cifar10", "cifar100"], help="torchvision's test split instead")
    p.add_argument("--root", default=str(D.cache_dir() / "torchvision"), help="download folder for --torchvision")
    p.add_argument("--validation-split", action="store_true",
                   help="DIR is the training set: evaluate on the validation split the checkpoint recorded "
                        "(carved exactly as the trainer carved it)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="auto: bf16 on CPUs with native bf16, fp16 on CUDA; on: bf16 on any CPU; off: float32")
    p.add_argument("--tta", choices=["auto", *TTA_NAMES], default="auto",
                   help="test-time augmentation: flip averages with the mirror image, shiftN adds the image "
                        "moved by up to N pixels; auto: the checkpoint's own setting, which the analysis and the "
                        "app use too")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line) instead of tables")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    check_source_args(p, args)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def check_source_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The image source options the evaluator and the analysis share: one source; a split needs the folder."""
    if bool(args.data) == bool(args.torchvision):
        parser.error("give exactly one of --data DIR or --torchvision cifar10|cifar100")
    if args.validation_split and not args.data:
        parser.error("--validation-split needs --data TRAIN_DIR (the folder the checkpoint was trained on)")


def load_source(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[D.TensorDataset, str]:
    """(images, a description) from --data (at the checkpoint's image size, or its recorded validation split
    with --validation-split) or --torchvision (the official test split, 32x32 only)."""
    size = int(meta.get("image_size", 32))
    if args.data:
        dataset = D.load_image_folder(args.data, size)
        if args.validation_split:
            return validation_split(dataset, meta), f"{args.data} (validation split)"
        return dataset, args.data
    if size != 32:
        raise ValueError(f"the checkpoint expects {size}x{size} images; torchvision's CIFAR is 32x32")
    return (D.load_torchvision_cifar(args.torchvision, args.root, train=False, download=True),
            f"{args.torchvision} test split")


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    try:
        model, meta = load_checkpoint(args.checkpoint, device=device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        dataset, source = load_source(args, meta)
    except (OSError, ValueError, RuntimeError) as e:  # missing folder, no images, offline download
        print(f"error: cannot load {args.data or args.torchvision}: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        result = evaluate(model, dataset, meta, batch_size=args.batch_size, device=device,
                          progress=not args.no_progress, amp=args.amp,
                          tta=None if args.tta == "auto" else args.tta)
    except ClassMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    result = {"checkpoint": str(args.checkpoint), "data": source, "dataset": meta.get("dataset"), **result}
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result, f"{args.checkpoint} on {source} ({len(result['classes'])} classes)"))
    return result


if __name__ == "__main__":
    main()
