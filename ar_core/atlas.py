"""The head atlas: what each attention head of a trained model looks for, over a data set.

From the per-image arrays of the analysis's one pass (confidence gates, each head's top class), for
every attended layer and head: the images where its confidence gate is highest and lowest, the
accuracy of its own hypothesis alone, the classes of its top images, its mean gate, and how often
it is its layer's most trusted head. The maps over those few images, and a mean map over a sample,
are computed on request (:func:`head_maps`, :func:`mean_maps`): a handful of images, not another pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .inference import inspect
from .model import AttendAndRectify
from .tta import TTALike

TOP = 16  # images per head at each end of the ranking


def head_atlas(cat: dict[str, torch.Tensor], labels: torch.Tensor, classes: Sequence[str], sources: Sequence[str],
               top: int = TOP) -> dict[str, Any]:
    """JSON-ready atlas from ``evaluate.collect``'s arrays (``conf_gates/<layer>``, ``head_pred/<layer>``).

    Image indices refer to the analysed data set's order. Empty for a baseline.
    """
    layers = [s for s in sources if s != "network"]
    if not layers:
        return {}
    m = len(classes)
    top = min(top, len(labels))  # what "its top N images" means on a data set of fewer
    out: dict[str, Any] = {"top": top, "layers": {}}
    for name in layers:
        gates, preds = cat[f"conf_gates/{name}"].float(), cat[f"head_pred/{name}"]
        trusted = gates.argmax(1)
        heads = []
        for k in range(gates.shape[1]):
            order = torch.argsort(gates[:, k], descending=True, stable=True)
            best, worst = order[:top], order[-top:].flip(0)  # worst: the lowest gate first
            counts = torch.bincount(labels[best].long(), minlength=m)
            ranked = [c for c in torch.argsort(counts, descending=True, stable=True).tolist() if counts[c] > 0]
            heads.append({
                "head": k + 1,
                "accuracy": float((preds[:, k] == labels).double().mean()),
                "most_trusted_share": float((trusted == k).double().mean()),
                "gate_mean": float(gates[:, k].double().mean()),
                "favourite_class": classes[int(torch.bincount(preds[:, k].long(), minlength=m).argmax())],
                "top_indices": best.tolist(), "top_gates": gates[best, k].tolist(),
                "bottom_indices": worst.tolist(), "bottom_gates": gates[worst, k].tolist(),
                "top_classes": {classes[c]: int(counts[c]) for c in ranked},
            })
        out["layers"][name] = heads
    return out


def head_maps(model: AttendAndRectify, images: torch.Tensor, meta: dict[str, Any], indices: Sequence[int],
              layer: str, head: int, tta: TTALike | None = None) -> torch.Tensor:
    """Head ``head`` (0-based) of ``layer``: its attention maps (n, h, w) over uint8 ``images[indices]``."""
    if not indices:
        raise ValueError("no images to draw")
    ins = inspect(model, images[list(indices)], meta, tta=tta)
    names = [l.name for l in ins.trace.layers]
    if layer not in names:
        raise ValueError(f"no attended layer {layer!r}; this model attends {names}")
    return ins.trace.layers[names.index(layer)].attention_maps[:, head]


def mean_maps(model: AttendAndRectify, images: torch.Tensor, meta: dict[str, Any], indices: Sequence[int],
              tta: TTALike | None = None, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Every attended layer's mean attention map per head, (K, h, w), over uint8 ``images[indices]``."""
    indices = list(indices)
    if not indices:
        raise ValueError("no images to average")
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(indices), batch_size):
        trace = inspect(model, images[indices[start:start + batch_size]], meta, tta=tta).trace
        for layer in trace.layers:
            s = layer.attention_maps.sum(0)
            sums[layer.name] = sums[layer.name] + s if layer.name in sums else s
    return {name: s / len(indices) for name, s in sums.items()}


def sample(n: int, k: int, seed: int = 0) -> list[int]:
    """A fixed random sample of ``k`` of ``n`` image indices (all of them when k >= n)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values.tolist()
