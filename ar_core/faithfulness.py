"""Do explanation maps point at what the model uses? Deletion and insertion curves.

Deletion: remove pixels from the most to the least important (replace them by a blurred or
mean-filled copy) and record the probability of the class; a faithful map makes it fall fast, so a
*lower* area is better. Insertion: start from the fully removed image and reveal pixels in the same
order; a *higher* area is better. A random order is the baseline every map must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import AttendAndRectify


@dataclass
class Curves:
    fractions: np.ndarray  # (S+1,) share of pixels removed (deletion) / revealed (insertion)
    deletion: np.ndarray  # (S+1,) probability of the class
    insertion: np.ndarray  # (S+1,)

    @property
    def deletion_area(self) -> float:
        return area(self.fractions, self.deletion)

    @property
    def insertion_area(self) -> float:
        return area(self.fractions, self.insertion)


def area(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve sampled at ``x`` (trapezoid rule); x spans [0, 1]."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)


def removed_image(x: torch.Tensor, mode: str = "blur") -> torch.Tensor:
    """What a pixel becomes when removed: a strongly blurred copy, or the image's channel means."""
    if mode == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x).clone()
    if mode != "blur":
        raise ValueError(f"mode must be 'blur' or 'mean', got {mode!r}")
    k = 11
    sigma = 5.0
    t = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[-3]
    pad = (k // 2,) * 4
    y = F.conv2d(F.pad(x, pad, mode="reflect"), g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(y, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _order(saliency: np.ndarray) -> np.ndarray:
    """Pixel indices from most to least important (ties broken by position, stably)."""
    return np.argsort(-np.asarray(saliency, dtype=np.float64).ravel(), kind="stable")


@torch.no_grad()
def curves(model: AttendAndRectify, x: torch.Tensor, target: int, saliency: np.ndarray, steps: int = 16,
           mode: str = "blur") -> Curves:
    """Deletion and insertion curves of class ``target`` for one normalised image x (1, 3, H, W).

    ``saliency`` (H, W) orders the pixels. All 2·(steps+1) perturbed images run as one batch.
    """
    _, _, h, w = x.shape
    if saliency.shape != (h, w):
        raise ValueError(f"saliency map {saliency.shape} does not match the image {(h, w)}")
    order = torch.from_numpy(_order(saliency))
    gone = removed_image(x, mode)
    counts = np.linspace(0, h * w, steps + 1).round().astype(int)
    masks = torch.zeros(steps + 1, h * w, dtype=torch.bool)
    for i, n in enumerate(counts):
        masks[i, order[:n]] = True
    masks = masks.view(steps + 1, 1, h, w).to(x.device)
    deleted = torch.where(masks, gone, x)
    inserted = torch.where(masks, x, gone)
    probs = torch.softmax(model(torch.cat([deleted, inserted])).float(), dim=1)[:, target].cpu().numpy()
    return Curves(counts / (h * w), probs[:steps + 1], probs[steps + 1:])


def random_saliency(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A random pixel order: the baseline (its expected curves are those of chance)."""
    return np.random.default_rng(seed).random(shape)
