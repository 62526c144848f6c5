"""Do explanation maps point at what the model uses? Deletion and insertion curves.

Deletion: remove pixels from the most to the least important (replace them by a blurred or
mean-filled copy) and record the probability of the class; a faithful map makes it fall fast, so a
*lower* area is better. Insertion: start from the fully removed image and reveal pixels in the same
order; a *higher* area is better. A random order is the baseline every map must beat.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inference import probabilities


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


def curves(model: nn.Module, x: torch.Tensor, target: int, saliency: np.ndarray, steps: int = 16,
           mode: str = "blur") -> Curves:
    """Deletion and insertion curves of class ``target`` for one normalised image x (1, 3, H, W).

    ``saliency`` (H, W) orders the pixels.
    """
    return curves_for_maps(model, x, target, {"map": saliency}, steps, mode)["map"]


def curves_for_maps(model: nn.Module, x: torch.Tensor, target: int, maps: dict[str, np.ndarray], steps: int = 16,
                    mode: str = "blur") -> dict[str, Curves]:
    """The curves of several maps of one image x (1, 3, H, W), all in one batch."""
    _, _, h, w = x.shape
    for name, sal in maps.items():
        if np.shape(sal) != (h, w):
            raise ValueError(f"saliency map {name!r} {np.shape(sal)} does not match the image {(h, w)}")
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in maps.values()])[None]
    fractions, deletion, insertion = curves_batch(model, x, [target], stacked, steps, mode)
    return {name: Curves(fractions, deletion[0, j], insertion[0, j]) for j, name in enumerate(maps)}


@torch.no_grad()
def curves_batch(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | torch.Tensor,
                 saliency: np.ndarray | torch.Tensor, steps: int = 16, mode: str = "blur",
                 batch_size: int = 256, autocast: Callable[[], ContextManager] = contextlib.nullcontext
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deletion and insertion curves of many images and many maps per image, batched.

    x (B, 3, H, W) normalised images, ``targets`` (B,) the class of each, ``saliency`` (B, M, H, W)
    M maps per image. Returns ``fractions`` (S+1,), ``deletion`` and ``insertion`` (B, M, S+1).
    The curves are those of :func:`curves`; the endpoints of every curve are the image itself and the
    fully removed image, so they run once per image instead of once per map and curve.
    ``autocast`` wraps the model's passes only (the perturbed images are built in float32); the
    analysis passes its precision policy's (``ar_core.precision``).
    """
    b, _, h, w = x.shape
    saliency = torch.as_tensor(np.asarray(saliency) if not torch.is_tensor(saliency) else saliency)
    if saliency.ndim != 4 or saliency.shape[0] != b or tuple(saliency.shape[-2:]) != (h, w):
        raise ValueError(f"saliency maps of shape {tuple(saliency.shape)} do not match {b} images of {h}x{w}; "
                         f"expected ({b}, maps, {h}, {w})")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    m, n = saliency.shape[1], h * w
    targets = torch.as_tensor(targets, dtype=torch.long).view(b)
    counts = np.linspace(0, n, steps + 1).round().astype(int)
    # rank[p] = position of pixel p in the importance order; step i removes the pixels ranked < counts[i].
    order = torch.from_numpy(np.argsort(-saliency.double().reshape(b * m, n).cpu().numpy(), axis=1, kind="stable"))
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(b * m, n)).view(b, m, 1, n)
    inner = torch.as_tensor(counts[1:-1]).view(1, 1, -1, 1)
    masks = (rank < inner).view(b, m, steps - 1, 1, h, w).to(x.device)  # (B, M, S-1, 1, H, W)
    gone = removed_image(x, mode)

    # One flat list of perturbed images: [image, removed] for each image, then every interior step.
    xs, gs = x[:, None, None], gone[:, None, None]
    flat = [torch.stack([x, gone], 1).flatten(0, 1),
            torch.where(masks, gs, xs).flatten(0, 2), torch.where(masks, xs, gs).flatten(0, 2)]
    who = torch.cat([torch.arange(b).repeat_interleave(2), torch.arange(b).repeat_interleave(m * (steps - 1)).repeat(2)])
    images = torch.cat(flat)
    probs = torch.empty(len(images))
    tgt = targets.to(x.device)[who.to(x.device)]
    for s in range(0, len(images), batch_size):
        with autocast():
            scores = model(images[s:s + batch_size])
        out = probabilities(scores)
        probs[s:s + batch_size] = out.gather(1, tgt[s:s + batch_size, None])[:, 0].cpu()
    ends = probs[:2 * b].view(b, 2)
    inner_del = probs[2 * b:2 * b + b * m * (steps - 1)].view(b, m, steps - 1)
    inner_ins = probs[2 * b + b * m * (steps - 1):].view(b, m, steps - 1)
    full, removed = ends[:, None, 0:1].expand(b, m, 1), ends[:, None, 1:2].expand(b, m, 1)
    deletion = torch.cat([full, inner_del, removed], 2).numpy()
    insertion = torch.cat([removed, inner_ins, full], 2).numpy()
    return counts / n, deletion, insertion


def random_saliency(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A random pixel order: the baseline (its expected curves are those of chance)."""
    return np.random.default_rng(seed).random(shape)
