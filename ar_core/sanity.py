"""Sanity checks for explanations: cascading model-parameter randomisation (Adebayo et al., 2018).

The weights are re-initialised from the output side down — the gates and heads (global gate,
attention modules, classifier) first, then the backbone's stages from the deepest to the stem —
and after each step every map is computed again for the same image and class. A map that still
looks like the original once the weights that produced it are destroyed does not explain the
model. Similarity to the original: Spearman rank correlation and SSIM (maps rescaled to [0, 1]).

    python -m ar_core.analyze --checkpoint ... --data DIR --out report/ --sanity 100
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attribution import attribute, gated_attention, spearman, unit_range
from .model import AttendAndRectify
from .wrn import WideResNet

METHODS = ("attention", "saliency", "integrated_gradients", "gradcam")
MapFn = Callable[[AttendAndRectify, torch.Tensor, int], np.ndarray]


# ---------------------------------------------------------------- similarity

def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al., 2004) of two maps with values in [0, 1].

    Gaussian window (11 pixels, σ 1.5, shrunk for smaller maps), no padding, C1 = 0.01², C2 = 0.03².
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)[None, None]
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)[None, None]
    w = _gaussian_window(min(window, *x.shape[-2:]), sigma)
    mean = lambda t: F.conv2d(t, w)  # noqa: E731
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx ** 2, mean(y * y) - my ** 2, mean(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def similarity(original: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation (NaN if either map is constant) and SSIM of maps rescaled to [0, 1]."""
    return {"spearman": spearman(original, other), "ssim": ssim(unit_range(original), unit_range(other))}


# ---------------------------------------------------------------- the cascade

def cascade_stages(model: AttendAndRectify) -> list[tuple[str, list[nn.Module]]]:
    """The randomisation steps, output side first: (name, modules re-initialised at that step)."""
    heads = [m for m in (model.global_gate, model.attention) if m is not None and len(list(m.parameters()))]
    first = "gates & heads" if model.attend else "classifier"
    b = model.backbone
    if isinstance(b, WideResNet):
        groups = [("group3", [b.groups[2], b.bn]), ("group2", [b.groups[1]]),
                  ("group1 & stem", [b.groups[0], b.stem, *([b.stem_bn] if b.stem_bn is not None else [])])]
        return [(first, [*heads, b.fc]), *groups]
    body = getattr(b, "body", None)
    if body is not None and hasattr(body, "layer4"):  # torchvision ResNet
        return [(first, [*heads, body.fc]), ("layer4", [body.layer4]), ("layer3", [body.layer3]),
                ("layer2", [body.layer2]), ("layer1 & stem", [body.layer1, body.conv1, body.bn1])]
    raise ValueError(f"no randomisation cascade is defined for a {type(b).__name__} backbone")


def randomized_cascade(model: AttendAndRectify, seed: int = 0) -> list[tuple[str, AttendAndRectify]]:
    """[("original", copy), (stage, copy randomised up to that stage), ...], all private float32 copies.

    Each step re-initialises its modules as PyTorch initialises them (``reset_parameters``; batch
    norms go back to the identity with fresh statistics). The given model is never modified.
    """
    net = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    out = [("original", net)]
    for s, (name, _) in enumerate(cascade_stages(net)):
        net = copy.deepcopy(net)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + s)
            for module in cascade_stages(net)[s][1]:
                for m in module.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
        out.append((name, net.eval()))
    return out


def traced_attention(net: AttendAndRectify, x: torch.Tensor) -> np.ndarray:
    """The gated attention map (:func:`ar_core.attribution.gated_attention`) of ``net`` for one image."""
    with torch.no_grad():
        t = net.trace(x).map(lambda v: v.float().cpu())
    return gated_attention(t, 0, x.shape[-1])


def explanation_maps(net: AttendAndRectify, x: torch.Tensor, target: int, methods: Sequence[str],
                     ig_steps: int = 16, custom: dict[str, MapFn] | None = None) -> dict[str, np.ndarray]:
    """Each method's map of class ``target`` for one normalised image (hooks ``net``: a private copy)."""
    maps = {}
    for m in methods:
        if custom and m in custom:
            maps[m] = custom[m](net, x, target)
        elif m == "attention":
            if not net.attend:
                raise ValueError("a baseline (AD = 0) has no attention maps; check the attributions only")
            maps[m] = traced_attention(net, x)
        else:
            layer = net.attend[-1] if net.attend else "last"
            maps[m] = attribute(net, x, target, m, layer=layer, ig_steps=ig_steps, copy_model=False).map
    return maps


@dataclass
class SanityResult:
    """One image through the cascade: each stage's maps, and their similarity to the original's."""

    stages: list[str]
    target: int
    maps: dict[str, list[np.ndarray]]  # method → one map per stage (stage 0: the trained model)
    scores: dict[str, dict[str, list[float]]]  # method → {"spearman": [...], "ssim": [...]} per stage
    predictions: list[int] = field(default_factory=list)  # each stage's fused prediction
    seconds: float = 0.0


def sanity_check(model: AttendAndRectify, x: torch.Tensor, methods: Sequence[str] = METHODS, seed: int = 0,
                 ig_steps: int = 16, cascade: list[tuple[str, AttendAndRectify]] | None = None,
                 custom: dict[str, MapFn] | None = None, target: int | None = None) -> SanityResult:
    """Cascading randomisation for one normalised image x (1, 3, H, W), explaining ``target``
    (default: the trained model's fused prediction) at every stage.

    ``cascade`` reuses models from :func:`randomized_cascade` across images; ``custom`` adds
    map functions ``fn(net, x, target)`` under their own names.
    """
    if not methods:
        raise ValueError("choose at least one map to check")
    t0 = time.perf_counter()
    cascade = cascade or randomized_cascade(model, seed)
    device = next(cascade[0][1].parameters()).device
    x = x.to(device).float()
    with torch.no_grad():
        preds = [int(net(x)[0].argmax()) for _, net in cascade]
    target = preds[0] if target is None else target
    maps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for _, net in cascade:
        for m, amap in explanation_maps(net, x, target, methods, ig_steps, custom).items():
            maps[m].append(np.asarray(amap, dtype=np.float64))
    scores = {m: {"spearman": [], "ssim": []} for m in methods}
    for m, per_stage in maps.items():
        for amap in per_stage:
            for k, v in similarity(per_stage[0], amap).items():
                scores[m][k].append(v)
    return SanityResult([name for name, _ in cascade], target, maps, scores, preds, time.perf_counter() - t0)


RESEMBLES = 0.5  # Spearman to the original above this once every weight is random: the map fails


def verdict(scores: dict[str, list[float]]) -> str:
    """One sentence on a method's scores: does its map still resemble the original at the last stage?"""
    rho, s = scores["spearman"][-1], scores["ssim"][-1]
    if math.isnan(rho):
        return f"with every weight random the map is constant (SSIM {s:.2f}): it changed completely"
    if rho > RESEMBLES:
        return (f"with every weight random it still resembles the original (Spearman {rho:.2f}, SSIM {s:.2f}): "
                f"it shows the image more than the model")
    return f"with every weight random it no longer resembles the original (Spearman {rho:.2f}, SSIM {s:.2f})"


# ---------------------------------------------------------------- over many images

def sanity_over(model: AttendAndRectify, images: torch.Tensor, meta: dict[str, Any], indices: Sequence[int],
                methods: Sequence[str] = METHODS, seed: int = 0, ig_steps: int = 16,
                progress: Callable[[int], None] | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """(stage names, {"<method>/<spearman|ssim>": (n_images, n_stages)}) for uint8 ``images[indices]``."""
    from .inference import preprocess

    cascade = randomized_cascade(model, seed)
    out: dict[str, np.ndarray] = {}
    for j, i in enumerate(indices):
        r = sanity_check(model, preprocess(images[i:i + 1], meta), methods, ig_steps=ig_steps, cascade=cascade)
        for m, s in r.scores.items():
            for k, v in s.items():
                out.setdefault(f"{m}/{k}", np.full((len(indices), len(r.stages)), np.nan))[j] = v
        if progress is not None:
            progress(j + 1)
    return [name for name, _ in cascade], out


def summarize(stages: Sequence[str], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean and std over images of each method's similarity per stage (NaNs, from constant maps, skipped)."""
    methods: dict[str, dict[str, list]] = {}
    for key, v in arrays.items():
        method, metric = key.split("/")
        ok = ~np.isnan(v)
        n = ok.sum(0)
        mean = np.where(n > 0, np.nansum(v, 0) / np.maximum(n, 1), np.nan)
        sq = np.where(ok, (v - mean) ** 2, 0.0).sum(0)
        std = np.sqrt(sq / np.maximum(n, 1))
        methods.setdefault(method, {})[f"{metric}_mean"] = [None if np.isnan(x) else round(float(x), 4) for x in mean]
        methods[method][f"{metric}_std"] = [None if np.isnan(x) else round(float(x), 4) for x in std]
        methods[method][f"{metric}_defined"] = n.tolist()
    images = next(iter(arrays.values())).shape[0] if arrays else 0
    return {"stages": list(stages), "images": int(images), "methods": methods}


def figure(summary: dict[str, Any]):
    """Matplotlib figure for reports: each method's similarity to its original map, stage by stage."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    stages = summary["stages"]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    for ax, metric, label in zip(fig.subplots(1, 2), ("spearman", "ssim"), ("Spearman rank correlation", "SSIM")):
        for method, s in summary["methods"].items():
            mean = np.array([np.nan if v is None else v for v in s[f"{metric}_mean"]], dtype=float)
            std = np.array([np.nan if v is None else v for v in s[f"{metric}_std"]], dtype=float)
            ax.errorbar(range(len(stages)), mean, yerr=std, marker="o", capsize=3, label=method)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xticks(range(len(stages)), stages, rotation=20, fontsize=8)
        ax.set(ylabel=label, ylim=(-0.3, 1.05), title=label)
        ax.legend(fontsize=7)
    fig.suptitle(f"similarity to the trained model's map, mean ± std over {summary['images']} images", fontsize=10)
    fig.supxlabel("weights randomised, cumulatively from the output side", fontsize=9)
    return fig
