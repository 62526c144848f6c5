"""Perturbations of uint8 images, and sweeps of accuracy against their strength.

    python -m ar_core.perturb --checkpoint ATT.safetensors --baseline BASE.safetensors --data DIR \
        --n 500 --out OUTDIR

The paper claims attention helps under clutter: ``clutter`` shrinks the image onto a canvas tiled
with patches of other images, ``occlude`` hides a square patch. The sweeps give accuracy against
strength for the attention model and its baseline side by side (JSON and a PNG figure).
Every function takes and returns (3, H, W) or (B, 3, H, W) uint8 tensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .precision import device_arg, pick_device
from .tta import NAMES as TTA_NAMES
from .tta import TTALike
from .tta import resolve as resolve_tta


def occlude(img: torch.Tensor, x: int, y: int, size: int, value: int = 127) -> torch.Tensor:
    """A size x size grey square with its top-left corner at (x, y), clipped to the image."""
    out = img.clone()
    out[..., max(0, y):max(0, y + size), max(0, x):max(0, x + size)] = value
    return out


def shift(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate by (dx, dy) pixels, filling the uncovered border by edge replication."""
    h, w = img.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    x = F.pad(img.float().reshape(-1, 3, h, w), pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return x[..., top:top + h, left:left + w].reshape(img.shape).round().to(torch.uint8)


def adjust(img: torch.Tensor, brightness: float = 0.0, contrast: float = 1.0) -> torch.Tensor:
    """Contrast about the image mean, then add ``brightness`` (a fraction of 255)."""
    x = img.float()
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    return ((x - mean) * contrast + mean + 255 * brightness).clamp(0, 255).round().to(torch.uint8)


def add_noise(img: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of ``std`` (a fraction of 255), reproducible by seed."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(img.shape, generator=g) * 255 * std
    return (img.float() + noise).clamp(0, 255).round().to(torch.uint8)


def clutter(img: torch.Tensor, others: torch.Tensor, scale: float, seed: int = 0) -> torch.Tensor:
    """Shrink ``img`` by ``scale`` onto a canvas tiled with patches cut from ``others``.

    ``others`` (N, 3, H, W) supplies the clutter; the object lands at a random place (seeded).
    scale 1 returns the image itself.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    h, w = img.shape[-2:]
    if scale == 1:
        return img.clone()
    g = torch.Generator().manual_seed(seed)
    tile = max(4, h // 4)
    canvas = torch.empty(3, h, w, dtype=torch.uint8)
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            src = others[int(torch.randint(len(others), (1,), generator=g))]
            sy = int(torch.randint(0, h - tile + 1, (1,), generator=g))
            sx = int(torch.randint(0, w - tile + 1, (1,), generator=g))
            patch = src[:, sy:sy + tile, sx:sx + tile]
            canvas[:, ty:ty + tile, tx:tx + tile] = patch[:, :min(tile, h - ty), :min(tile, w - tx)]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(img.float()[None], size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)[0]
    y = int(torch.randint(0, h - sh + 1, (1,), generator=g))
    x = int(torch.randint(0, w - sw + 1, (1,), generator=g))
    canvas[:, y:y + sh, x:x + sw] = small.round().clamp(0, 255).to(torch.uint8)
    return canvas


def own_tiles(img: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Clutter made of the image itself: its 4x4 grid of tiles (sized by the image), shuffled.

    Returns (1, 3, H, W), a stand-in for ``others`` in :func:`clutter` when no other images are at
    hand; a border that the grid does not cover keeps the image's own pixels.
    """
    h, w = img.shape[-2:]
    th, tw = max(1, h // 4), max(1, w // 4)
    rows, cols = h // th, w // tw
    tiles = img[:, :rows * th, :cols * tw].unfold(1, th, th).unfold(2, tw, tw)  # (3, rows, cols, th, tw)
    tiles = tiles.reshape(3, rows * cols, th, tw)
    tiles = tiles[:, torch.randperm(rows * cols, generator=torch.Generator().manual_seed(seed))]
    out = img.clone()
    out[:, :rows * th, :cols * tw] = tiles.reshape(3, rows, cols, th, tw).permute(0, 1, 3, 2, 4).reshape(
        3, rows * th, cols * tw)
    return out[None]


@dataclass(frozen=True)
class Perturbation:
    """One setting of the lab's controls, applied in this order: occlusion, shift, clutter, noise,
    brightness and contrast. Positions and sizes are in pixels of the model's input."""

    occlusion: tuple[int, int, int] | None = None  # (x, y, size) of a grey square
    shift: tuple[int, int] = (0, 0)
    clutter_scale: float = 1.0  # 1: no clutter
    noise: float = 0.0
    brightness: float = 0.0
    contrast: float = 1.0
    seed: int = 0  # clutter placement, own-tile shuffle and noise


def apply(img: torch.Tensor, p: Perturbation, others: torch.Tensor | None = None) -> torch.Tensor:
    """``img`` (3, H, W) uint8 perturbed as ``p`` says; ``others`` (N, 3, h, w) supply the clutter
    (resized to the image when their size differs), else the image's own shuffled tiles."""
    x = img
    if p.occlusion is not None:
        x = occlude(x, *p.occlusion)
    if p.shift != (0, 0):
        x = shift(x, *p.shift)
    if p.clutter_scale < 1.0:
        if others is None:
            others = own_tiles(x, p.seed)
        elif others.shape[-2:] != x.shape[-2:]:
            others = F.interpolate(others.float(), size=tuple(x.shape[-2:]), mode="bilinear", antialias=True,
                                   align_corners=False).round().clamp(0, 255).to(torch.uint8)
        x = clutter(x, others, p.clutter_scale, seed=p.seed)
    if p.noise:
        x = add_noise(x, p.noise, seed=p.seed)
    if p.brightness or p.contrast != 1.0:
        x = adjust(x, p.brightness, p.contrast)
    return x


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, meta: dict, batch_size: int = 250,
             tta: TTALike | None = None) -> dict:
    """Fused and network-only accuracy on uint8 images (``tta``: None for the checkpoint's own augmentation)."""
    from .inference import predict_all

    preds, y = predict_all(model, images, meta, batch_size=batch_size, tta=tta), labels.numpy()
    return {"fused": float((preds["fused"] == y).mean()), "network": float((preds["net"] == y).mean())}


def occlusion_centres(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """(n, 2) square centres as (x, y): x anywhere across the width, y anywhere down the height."""
    return torch.stack([torch.randint(0, w, (n,), generator=g), torch.randint(0, h, (n,), generator=g)], 1)


def sweep(models: dict[str, tuple], images: torch.Tensor, labels: torch.Tensor,
          clutter_scales: Sequence[float] = (1.0, 0.8, 0.6, 0.5, 0.4),
          occlusion_sizes: Sequence[int] = (0, 4, 8, 12, 16), seed: int = 0, tta: TTALike | None = None) -> dict:
    """Accuracy against strength for each model, on the same perturbed images (``tta``: one augmentation for
    every model, or None for each checkpoint's own)."""
    g = torch.Generator().manual_seed(seed)
    n, (h, w) = len(images), images.shape[-2:]
    others = images[torch.randperm(n, generator=g)]
    out: dict = {"n": n, "clutter": {"scales": list(clutter_scales)}, "occlusion": {"sizes": list(occlusion_sizes)},
                 "test_time_augmentation": {name: resolve_tta(tta, meta).name for name, (_, meta) in models.items()}}
    centres = occlusion_centres(n, h, w, g)
    for name, (model, meta) in models.items():
        model.eval()
        out["clutter"][name] = [accuracy(model, torch.stack([clutter(images[i], others, s, seed=i) for i in range(n)]),
                                         labels, meta, tta=tta)["fused"] for s in clutter_scales]
        occ = []
        for size in occlusion_sizes:
            pert = torch.stack([occlude(images[i], int(centres[i, 0]) - size // 2, int(centres[i, 1]) - size // 2,
                                        size) for i in range(n)])
            occ.append(accuracy(model, pert, labels, meta, tta=tta)["fused"])
        out["occlusion"][name] = occ
    return out


def sweep_figure(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, kind, xkey, xlabel in ((axes[0], "clutter", "scales", "object scale on the cluttered canvas"),
                                   (axes[1], "occlusion", "sizes", "occluding square (pixels)")):
        for name, accs in result[kind].items():
            if name != xkey:
                ax.plot(result[kind][xkey], [100 * a for a in accs], marker="o", label=name)
        ax.set(xlabel=xlabel, ylabel="accuracy %", title=f"{kind} ({result['n']} images)")
        if kind == "clutter":
            ax.invert_xaxis()
        ax.legend()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    from . import data as D
    from .checkpoint import CheckpointError, load_checkpoint
    from .evaluate import ClassMismatchError, align_labels, validation_split

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the attention model")
    p.add_argument("--baseline", help="its baseline (AD = 0), trained on the same classes")
    p.add_argument("--data", required=True, help="ImageFolder tree named by the checkpoint's classes")
    p.add_argument("--validation-split", action="store_true",
                   help="DIR is the training set: use the validation split the checkpoint recorded")
    p.add_argument("--n", type=int, default=500, help="images (a fixed random subset)")
    p.add_argument("--tta", choices=["auto", *TTA_NAMES], default="auto",
                   help="test-time augmentation for both models (auto: each checkpoint's own)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (as README's figures were measured), auto, cuda, cuda:N or mps")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        models = {"attention": load_checkpoint(a.checkpoint, device=pick_device(a.device))}
        if a.baseline:
            models["baseline"] = load_checkpoint(a.baseline, device=pick_device(a.device))
        meta = models["attention"][1]
        ds = D.load_image_folder(a.data, int(meta.get("image_size", 32)))
        if a.validation_split:
            ds = validation_split(ds, meta)
        ds = align_labels(ds, meta["classes"], subset=True)
        for name, (_, m) in models.items():
            if list(m["classes"]) != list(meta["classes"]):
                raise ClassMismatchError(f"the {name} checkpoint has other classes than the attention model")
    except (CheckpointError, ClassMismatchError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:a.n]
    result = sweep(models, ds.images[idx], ds.labels[idx], tta=None if a.tta == "auto" else a.tta)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "perturbation.json").write_text(json.dumps(result, indent=1))
    sweep_figure(result, out / "perturbation.png")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
