"""The whole data set's story: `python -m ar_core.analyze --checkpoint PATH --data DIR --out OUTDIR`.

Per-source accuracy, calibration and its reliability diagram, the rectification table (overall and
per class), global- and confidence-gate distributions (per-class means, entropy, which source
carries the most weight), head specialisation (mutual information between each head's top class and
the true class), confusion matrices of the fused and the network-only output, and the faithfulness
of attention maps and attributions (deletion/insertion areas against a random order), the gates'
pre-tanh values and how often they saturate, and with ``--sanity N`` the maps' sanity check by
cascading weight randomisation (ar_core.sanity).
OUTDIR gets ``analysis.json`` and PNG figures. Per-image results are cached on disk, keyed by the
checkpoint's weights and the data's content, and saved as they are computed, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import data as D
from .checkpoint import CheckpointError, load_checkpoint
from .atlas import head_atlas
from .gates import gate_statistics
from .inference import outcome_masks
from .evaluate import (ClassMismatchError, align_labels, calibration_bins, check_source_args, checkpoint_classes,
                       collect, confusion_matrix, load_source, summarize)
from .precision import autocast_for, device_arg, pick_device
from .tta import NAMES as TTA_NAMES
from .tta import TTALike
from .tta import resolve as resolve_tta
from .model import AttendAndRectify

FAITHFULNESS_METHODS = ("attention", "saliency", "gradcam", "integrated_gradients", "random")
# The data-set page's default maps too. Integrated Gradients (16 gradient passes per image) is there on request.
DEFAULT_METHODS = ("attention", "saliency", "gradcam", "random")
# Each image costs about 122 model passes (4 maps x 2 curves x 15 steps, plus its two ends): 100
# images take ~35 s on a 2-core CPU in bf16, so the default analysis of 10,000 images (their
# predictions with flip take ~60 s) stays under two minutes. Ask for more with --faithfulness N.
DEFAULT_FAITHFULNESS_IMAGES = 100


# ---------------------------------------------------------------- pure statistics

def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of a (N, S) distribution."""
    return -torch.special.xlogy(p.double(), p.double()).sum(dim=1)


def mutual_information(a: torch.Tensor, b: torch.Tensor, na: int, nb: int) -> float:
    """I(A; B) in bits from paired integer samples (plug-in estimate)."""
    joint = torch.bincount(a.long() * nb + b.long(), minlength=na * nb).double().view(na, nb)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pa * pb).expand_as(joint)[nz]).log2()).sum())


def per_class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[float] | None]:
    """Mean row of ``values`` (N, C) for each class; None for a class without images."""
    out = []
    for c in range(num_classes):
        rows = values[labels == c]
        out.append(rows.double().mean(0).tolist() if len(rows) else None)
    return out


def dominant_source(global_gates: torch.Tensor) -> torch.Tensor:
    """(N,) index of the source carrying the most global-gate weight in each image."""
    return global_gates.argmax(dim=1)


def dataset_story(cat: dict[str, torch.Tensor], labels: torch.Tensor, classes: Sequence[str],
                  sources: Sequence[str]) -> dict[str, Any]:
    """Everything beyond the evaluator's numbers, from the per-image arrays of ``collect``."""
    m = len(classes)
    outcome = outcome_masks(labels, cat["pred"], cat["net_pred"])
    count, conf, acc = calibration_bins(cat["confidence"], outcome["correct"], 15)
    story: dict[str, Any] = {
        "reliability": {"count": count.tolist(), "confidence": conf.tolist(), "accuracy": acc.tolist()},
        "net_confusion_matrix": confusion_matrix(cat["net_pred"], labels, m).tolist(),
    }
    layers = [s for s in sources if s != "network"]
    if not layers:
        return story
    net_right = outcome["network right"]
    table = {"network right, fused right": int((net_right & outcome["correct"]).sum()),
             "network right, fused wrong (spoiled)": int(outcome["spoiled"].sum()),
             "network wrong, fused right (rectified)": int(outcome["rectified"].sum()),
             "network wrong, fused wrong": int((~net_right & outcome["wrong"]).sum())}
    story["rectification"] = table
    story["rectification_per_class"] = {
        c: {"rectified": int(((labels == j) & outcome["rectified"]).sum()),
            "spoiled": int(((labels == j) & outcome["spoiled"]).sum())} for j, c in enumerate(classes)}
    g = cat["global_gates"]
    story["global_gates_per_class"] = per_class_mean(g, labels, m)
    story["global_gate_entropy"] = float(entropy(g).mean())
    dominant = torch.bincount(dominant_source(g), minlength=len(sources)).double() / len(g)
    story["dominant_source_share"] = dict(zip(sources, dominant.tolist()))
    story["confidence_gates_per_class"] = {}
    story["confidence_gate_entropy"] = {}
    story["head_class_mi_bits"] = {}
    story["head_favourite_class"] = {}
    for name in layers:
        cg = cat[f"conf_gates/{name}"]
        story["confidence_gates_per_class"][name] = per_class_mean(cg, labels, m)
        story["confidence_gate_entropy"][name] = float(entropy(cg).mean())
        heads = cat[f"head_pred/{name}"]
        story["head_class_mi_bits"][name] = [mutual_information(heads[:, k], labels, m, m)
                                             for k in range(heads.shape[1])]
        story["head_favourite_class"][name] = [classes[int(torch.bincount(heads[:, k], minlength=m).argmax())]
                                               for k in range(heads.shape[1])]
    return story


# ---------------------------------------------------------------- faithfulness

def faithfulness(model: AttendAndRectify, images: torch.Tensor, meta: dict[str, Any], indices: Sequence[int],
                 methods: Sequence[str] = FAITHFULNESS_METHODS, steps: int = 16, mode: str = "blur",
                 progress: Callable[[int], None] | None = None, batch: int = 25, amp: str = "auto"
                 ) -> dict[str, np.ndarray]:
    """Deletion and insertion areas per image and method, explaining the fused prediction.

    'attention' is the attention of all attended layers, each fused over its heads by the
    confidence gates and weighted by its global gate, upsampled to the input. ``batch`` images at a
    time: their attributions in one pass per method and all their curves in large batches. The
    prediction explained and the maps are computed in float32; the curves' passes (nearly all the
    work) in the precision ``amp`` picks, as the predictions are (bf16 on CPUs with native bf16).
    """
    from .attribution import attribute_batch, gated_attention_maps, private_copy
    from .faithfulness import area, curves_batch, random_saliency
    from .inference import preprocess

    net = private_copy(model).float().to(memory_format=torch.channels_last)
    device = next(net.parameters()).device
    autocast, _ = autocast_for(device, amp)
    out = {f"{m}/{kind}": np.full(len(indices), np.nan) for m in methods for kind in ("deletion", "insertion")}
    for start in range(0, len(indices), batch):
        chosen = [int(i) for i in indices[start:start + batch]]
        x = preprocess(images[chosen], meta).to(device).contiguous(memory_format=torch.channels_last)
        size = x.shape[-1]
        with torch.no_grad():
            t = net.trace(x)
        targets = t.output.argmax(1)
        done, maps = [], []
        for method in methods:
            if method == "attention":
                if not t.layers:
                    continue
                sal = gated_attention_maps(t.map(lambda v: v.float().cpu()), size)
            elif method == "random":
                sal = np.stack([random_saliency((size, size), seed=i) for i in chosen])
            else:
                sal = attribute_batch(net, x, targets, method, ig_steps=16, copy_model=False)
            done.append(method)
            maps.append(sal)
        if maps:
            fractions, deletion, insertion = curves_batch(net, x, targets, np.stack(maps, 1), steps=steps, mode=mode,
                                                        autocast=autocast)
            for j, method in enumerate(done):
                for k in range(len(chosen)):
                    out[f"{method}/deletion"][start + k] = area(fractions, deletion[k, j])
                    out[f"{method}/insertion"][start + k] = area(fractions, insertion[k, j])
        if progress is not None:
            progress(start + len(chosen))
    return out


def summarize_faithfulness(areas: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    res: dict[str, dict[str, float]] = {}
    for key, v in areas.items():
        method, kind = key.split("/")
        v = v[~np.isnan(v)]
        if len(v):
            res.setdefault(method, {})[f"{kind}_mean"] = float(v.mean())
            res[method][f"{kind}_std"] = float(v.std())
            res[method]["n"] = int(len(v))
    return res


# ---------------------------------------------------------------- caching

def cache_key(meta: dict[str, Any], dataset: D.TensorDataset, extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta.get("config", {}), sort_keys=True).encode())
    h.update(str(meta.get("weights_sha256", "")).encode())
    h.update(json.dumps(meta.get("normalization"), sort_keys=True).encode())  # the same weights see other inputs
    h.update(dataset.images.contiguous().numpy().tobytes())
    h.update(dataset.labels.numpy().tobytes())
    h.update(extra.encode())
    return h.hexdigest()[:24]


def predictions_cache(meta: dict[str, Any], dataset: D.TensorDataset, aug, precision: str) -> Path:
    """Where the per-image arrays of ``collect`` (one checkpoint, these images, this augmentation and
    precision) are kept: analyze and compare share them, so the second to ask costs nothing."""
    # "-v2": the per-image arrays gained the gates' pre-tanh values; older caches lack them.
    views = "" if aug.views == 1 else f"-{aug.name}"
    return D.cache_dir() / "analysis" / f"{cache_key(meta, dataset)}{views}-{precision}-v2.safetensors"


def _load_partial(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return {}, 0
    with safe_open(str(path), framework="pt") as f:
        done = int((f.metadata() or {}).get("done", 0))
    return load_file(str(path)), done


def _save_partial(path: Path, arrays: dict[str, torch.Tensor], done: int):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp), metadata={"done": str(done)})
    tmp.replace(path)


def collect_cached(model, dataset, meta, cache: Path | None, chunk: int = 2000, batch_size: int = 500,
                   progress=None, tta: TTALike = "none", amp: str = "auto") -> dict[str, torch.Tensor]:
    """``collect`` over the whole set in chunks, each saved as it finishes (resumable)."""
    arrays, done = _load_partial(cache) if cache else ({}, 0)
    n = len(dataset)
    while done < n:
        stop = min(n, done + chunk)
        part, _ = collect(model, dataset.images[done:stop], dataset.labels[done:stop], meta, batch_size,
                          progress=(lambda k, base=done: progress(base + k)) if progress else None, tta=tta,
                          amp=amp)
        arrays = {k: torch.cat([arrays[k], v]) if k in arrays else v for k, v in part.items()}
        done = stop
        if cache:
            _save_partial(cache, arrays, done)
    return arrays


# ---------------------------------------------------------------- figures (matplotlib, for the report)

def save_figures(result: dict[str, Any], out: Path) -> list[str]:
    """PNG figures of the analysis into ``out``; returns the file names."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = []
    classes = result["classes"]

    def save(fig, name):
        fig.savefig(out / name, dpi=110)
        names.append(name)

    rel = result["reliability"]
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    centers = (np.arange(15) + 0.5) / 15
    ax.bar(centers, rel["accuracy"], width=1 / 15, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    ax.set(xlabel="confidence (fused)", ylabel="accuracy", title=f"reliability, ECE {100 * result['ece']:.2f} %")
    ax.legend()
    save(fig, "reliability.png")
    for key, title in (("confusion_matrix", "fused output"), ("net_confusion_matrix", "network alone")):
        cm = np.asarray(result[key], dtype=float)
        fig = Figure(figsize=(6, 5.5), layout="constrained")
        ax = fig.subplots()
        im = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set(title=f"confusion, {title}", xlabel="predicted", ylabel="true")
        if len(classes) <= 20:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
        save(fig, f"{key}.png")
    if "source_accuracy" in result:
        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.subplots()
        src = result["source_accuracy"]
        ax.bar(list(src), [100 * v for v in src.values()], color="#4C78A8")
        ax.set(ylabel="accuracy %", title="each source alone vs the fused output",
               ylim=(max(0, 100 * min(src.values()) - 10), 100))
        save(fig, "source_accuracy.png")
        gpc = [row if row is not None else [np.nan] * len(result["sources"]) for row in result["global_gates_per_class"]]
        fig = Figure(figsize=(4 + 0.4 * len(result["sources"]), 1.5 + 0.18 * len(classes)), layout="constrained")
        ax = fig.subplots()
        im = ax.imshow(np.asarray(gpc), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(result["sources"])), result["sources"], rotation=30)
        if len(classes) <= 40:
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set(title="mean global gate per true class")
        fig.colorbar(im, ax=ax)
        save(fig, "global_gates_per_class.png")
        mi = result["head_class_mi_bits"]
        fig = Figure(figsize=(5, 3), layout="constrained")
        ax = fig.subplots()
        im = ax.imshow(np.asarray(list(mi.values())), cmap="magma", aspect="auto")
        ax.set_yticks(range(len(mi)), list(mi))
        ax.set_xticks(range(len(next(iter(mi.values())))), [f"head {k + 1}" for k in range(len(next(iter(mi.values()))))])
        ax.set(title="head specialisation: I(head's top class; true class), bits")
        fig.colorbar(im, ax=ax)
        save(fig, "head_class_mi.png")
    if result.get("gate_pre_tanh"):
        from .gates import figure as gate_figure

        save(gate_figure(result["gate_pre_tanh"]), "gate_pre_tanh.png")
    if result.get("sanity"):
        from .sanity import figure as sanity_figure

        save(sanity_figure(result["sanity"]), "sanity.png")
    if result.get("faithfulness"):
        fig = Figure(figsize=(7, 3.5), layout="constrained")
        axes = fig.subplots(1, 2)
        f = result["faithfulness"]
        methods = list(f)
        for ax, kind, better in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
            ax.bar(methods, [f[m][f"{kind}_mean"] for m in methods], yerr=[f[m][f"{kind}_std"] for m in methods],
                   color="#F58518", capsize=3)
            ax.set(title=f"{kind} area ({better} is better)")
            ax.tick_params(axis="x", rotation=30)
        save(fig, "faithfulness.png")
    return names


# ---------------------------------------------------------------- the whole analysis

def analyze(model: AttendAndRectify, dataset: D.TensorDataset, meta: dict[str, Any],
            faithfulness_n: int = DEFAULT_FAITHFULNESS_IMAGES, methods: Sequence[str] = DEFAULT_METHODS,
            batch_size: int = 500, use_cache: bool = True, progress: Callable[[str, int, int], None] | None = None,
            return_arrays: bool = False, tta: TTALike | None = None, sanity_n: int = 0, amp: str = "auto"):
    """Every number of the analysis as a JSON-ready dict (``progress(stage, done, total)``).

    ``tta``: test-time augmentation for the predictions and gates (None: the checkpoint's own, as in
    the evaluator and the app). Faithfulness explains the single, un-augmented pass.

    With ``return_arrays`` also the per-image arrays (predictions, gates), to list the images
    behind any number. ``sanity_n`` > 0 adds the cascading-randomisation sanity check of the maps
    over that many images (the first of the same fixed random order as faithfulness).
    """
    classes = checkpoint_classes(meta, model.num_classes, dataset)
    dataset = align_labels(dataset, classes, subset=True)  # a folder may hold some of the classes only
    model.eval()
    aug = resolve_tta(tta, meta)
    key = cache_key(meta, dataset)
    _, precision = autocast_for(next(model.parameters()).device, amp)
    cache = predictions_cache(meta, dataset, aug, precision) if use_cache else None
    t0 = time.perf_counter()
    n = len(dataset)
    cat = collect_cached(model, dataset, meta, cache, batch_size=batch_size, amp=amp,
                         progress=(lambda k: progress("predictions", k, n)) if progress else None, tta=aug)
    seconds = time.perf_counter() - t0
    result = summarize(cat, dataset.labels, classes, model.sources)
    result["sources"] = list(model.sources)
    result["test_time_augmentation"] = aug.name
    result["precision"] = precision  # of the predictions and gates
    result.update(dataset_story(cat, dataset.labels, classes, model.sources))
    if model.attend:
        result["gate_pre_tanh"] = gate_statistics(cat, model.sources)
        result["head_atlas"] = head_atlas(cat, dataset.labels, classes, model.sources)
    result["seconds_predictions"] = round(seconds, 2)
    if faithfulness_n > 0:
        k = min(faithfulness_n, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].tolist()
        methods = [m for m in methods if m != "attention" or model.attend]
        fcache = D.cache_dir() / "analysis" / f"{key}-faith-{'-'.join(methods)}-{precision}.safetensors" \
            if use_cache else None
        stored, done = _load_partial(fcache) if fcache else ({}, 0)
        # The images are a fixed random order, so a run for more images extends a cached shorter one.
        areas = {}
        for name in (f"{m}/{kind}" for m in methods for kind in ("deletion", "insertion")):
            areas[name] = np.full(k, np.nan)
            if name in stored:
                v = stored[name].numpy()[:k]
                areas[name][:len(v)] = v
        done = min(done, k)
        t1 = time.perf_counter()
        step = 25
        for start in range(min(done, k), k, step):
            stop = min(k, start + step)
            part = faithfulness(model, dataset.images, meta, order[start:stop], methods, amp=amp,
                                progress=(lambda j, base=start: progress("faithfulness", base + j, k)) if progress else None)
            for name, v in part.items():
                areas[name][start:stop] = v
            if fcache:
                _save_partial(fcache, {name: torch.from_numpy(v) for name, v in areas.items()}, stop)
        result["faithfulness"] = summarize_faithfulness(areas)
        result["faithfulness_images"] = k
        result["faithfulness_precision"] = precision
        result["seconds_faithfulness"] = round(time.perf_counter() - t1, 2)
    if sanity_n > 0:
        from . import sanity

        k = min(sanity_n, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].tolist()
        t2 = time.perf_counter()
        methods = [m for m in sanity.METHODS if m != "attention" or model.attend]
        stages, arrays = sanity.sanity_over(model, dataset.images, meta, order, methods,
                                            progress=(lambda j: progress("sanity", j, k)) if progress else None)
        result["sanity"] = {**sanity.summarize(stages, arrays), "seconds": round(time.perf_counter() - t2, 2),
                            "target": "the trained model's fused prediction (single view)"}
    return (result, cat) if return_arrays else result


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="ImageFolder tree named by the checkpoint's classes")
    p.add_argument("--torchvision", choices=["cifar10", "cifar100"], help="torchvision's test split instead")
    p.add_argument("--root", default=str(D.cache_dir() / "torchvision"))
    p.add_argument("--validation-split", action="store_true",
                   help="DIR is the training set: use the validation split the checkpoint recorded")
    p.add_argument("--out", required=True, help="output folder (analysis.json and PNG figures)")
    p.add_argument("--faithfulness", type=int, default=DEFAULT_FAITHFULNESS_IMAGES,
                   help="images for the deletion/insertion curves (0: skip); each costs about 120 model passes")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="precision of the predictions and the curves: auto is bf16 on CPUs with native bf16, "
                        "fp16 on CUDA; off: float32 everywhere")
    p.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS), choices=FAITHFULNESS_METHODS,
                   help="maps to test (integrated_gradients adds about 60 %% to the time of the other four)")
    p.add_argument("--sanity", type=int, default=0, metavar="N",
                   help="sanity check of the maps (cascading weight randomisation) over N images (0: skip)")
    p.add_argument("--tta", choices=["auto", *TTA_NAMES], default="auto",
                   help="test-time augmentation of the predictions and gates (auto: the checkpoint's own, as the "
                        "evaluator and the app use it)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (as README's figures were measured), auto, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    check_source_args(p, a)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        model, meta = load_checkpoint(a.checkpoint, device=pick_device(a.device))
        dataset, _ = load_source(a, meta)
    except (CheckpointError, OSError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(stage, done, total):
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = analyze(model, dataset, meta, a.faithfulness, a.methods, a.batch_size, not a.no_cache, progress,
                         sanity_n=a.sanity, tta=None if a.tta == "auto" else a.tta, amp=a.amp)
    except ClassMismatchError as e:
        sys.exit(f"error: {e}")
    for bar in bars.values():
        bar.close()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result["figures"] = save_figures(result, out)
    result["checkpoint"] = str(a.checkpoint)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    for line in result.get("gate_pre_tanh", {}).get("summary", []):
        print(line)
    print(f"accuracy {100 * result['accuracy']:.2f} %; wrote {out / 'analysis.json'} and {len(result['figures'])} figures")
    return result


if __name__ == "__main__":
    main()
