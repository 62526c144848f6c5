"""From an uploaded file to a trace: image decoding with clear errors, preprocessing, ablation, export.

No Streamlit here: the app lays these results out, tests and scripts call them directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .attention import fuse
from .data import MAX_PIXELS, fit_image, normalize, to_rgb, to_uint8  # noqa: F401 (fit_image, to_uint8: the app's)
from .model import LAYER_FIELDS, AttendAndRectify, Trace
from .tta import TTALike
from .tta import resolve as resolve_tta

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "MPO")


class ImageError(ValueError):
    """An input that cannot be used as an image; the message says why and what to do."""


def open_image(data: bytes, name: str = "image"):
    """Bytes of an uploaded file → a PIL image, its pixels not yet decoded, after the upload limits.

    Reads the header only (well under a millisecond), so an app can check every upload on each rerun
    and decode just the one it shows (:func:`load_image`)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{name} is empty; choose an image file (PNG, JPEG, WebP, BMP, GIF or TIFF)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB. "
                         f"Resize or compress it first.")
    with _decoding_errors(name):
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as e:
            raise ImageError(f"{name} is not an image file PIL can read; upload a PNG, JPEG, WebP, BMP, GIF or "
                             f"TIFF") from e
        if img.format not in FORMATS:
            raise ImageError(f"{name} is a {img.format} image; supported formats are PNG, JPEG, WebP, BMP, GIF "
                             f"and TIFF")
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(f"{name} is {img.width}x{img.height} pixels, more than the {MAX_PIXELS // 10**6} "
                             f"megapixel limit; downscale it first")
        return img


def load_image(data: bytes, name: str = "image"):
    """Bytes of an uploaded file → RGB PIL image (:func:`ar_core.data.to_rgb`), after the upload limits."""
    img = open_image(data, name)
    with _decoding_errors(name):
        return to_rgb(img)


@contextlib.contextmanager
def _decoding_errors(name: str):
    """What PIL raises on a damaged or hostile file, as one ImageError that names the file."""
    from PIL import Image

    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name} claims more pixels than the {MAX_PIXELS // 10**6} megapixel limit "
                         f"(a decompression bomb?); downscale it first") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name} could not be decoded (truncated or damaged file?): {e}") from e


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 (3, H, W) or (B, 3, H, W) → (H, W, 3) or (B, H, W, 3) array, as the app keeps and shows images."""
    return images.movedim(-3, -1).numpy()


def from_hwc(image: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 array, as the app keeps and shows images → a (1, 3, H, W) uint8 batch."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)


def image_digest(images: torch.Tensor) -> str:
    """A short SHA-256 of uint8 pixels and their shape: results are cached under what the model saw,
    never under a file name (every camera shot is 'camera.jpg')."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.to(torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def preprocess(images: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """uint8 (B, 3, H, W) → the normalised float input the checkpoint was trained on."""
    norm = meta.get("normalization") or {"mean": [0.5] * 3, "std": [0.25] * 3}
    return normalize(images, norm["mean"], norm["std"])


@dataclass
class Inspection:
    """A trace for one batch, on the CPU, with the labels and timing the app shows."""

    trace: Trace
    classes: list[str]
    latency_ms: float
    device: str


def inspect(model: AttendAndRectify, images: torch.Tensor, meta: dict[str, Any],
            tta: TTALike | None = None) -> Inspection:
    """Run ``model.trace`` on uint8 images; everything returned lives on the CPU in float32.

    ``tta``: the test-time augmentation (a name of ``ar_core.tta.NAMES``; None: the checkpoint's own).
    """
    device = next(model.parameters()).device
    x = preprocess(images, meta).to(device).contiguous(memory_format=torch.channels_last)
    aug = resolve_tta(tta, meta)
    t0 = time.perf_counter()
    with torch.inference_mode():
        trace = model.trace(x, flip=aug.flip, shift=aug.shift)
        trace = trace.map(lambda t: t.float().cpu())
    latency = (time.perf_counter() - t0) * 1000
    classes = meta.get("classes") or [str(i) for i in range(trace.output.shape[1])]
    return Inspection(trace, list(classes), latency, str(device))


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Display probabilities: softmax of fused log-scores, a source's logits or a hypothesis."""
    return F.softmax(scores.float(), dim=-1)


def topk(scores: torch.Tensor, classes: Sequence[str], k: int = 5) -> list[tuple[str, float, int]]:
    """[(class name, probability, index)] for one image's score vector (M,)."""
    p = probabilities(scores)
    values, idx = p.topk(min(k, len(classes)))
    return [(classes[i], float(v), int(i)) for v, i in zip(values, idx)]


def rectification(trace: Trace, i: int, label: int | None = None) -> str:
    """How fusion changed image ``i``'s answer.

    With a true label: 'rectified' (network wrong, fused right), 'spoiled' (the reverse),
    'both right', 'both wrong'. Without one: 'changed' or 'agrees'.
    """
    net = int(trace.net_output[i].argmax())
    fused = int(trace.output[i].argmax())
    if label is None:
        return "changed" if net != fused else "agrees"
    outcome = outcome_masks(np.asarray(label), np.asarray(fused), np.asarray(net))
    if outcome["rectified"]:
        return "rectified"
    if outcome["spoiled"]:
        return "spoiled"
    return "both right" if outcome["correct"] else "both wrong"


def ablate(trace: Trace, sources_on: Sequence[bool], heads_on: Sequence[Sequence[bool]] | None = None) -> torch.Tensor:
    """The fused output (B, M) with some sources or heads switched off, gates renormalised.

    ``sources_on``: one flag per source (layers, then the network). ``heads_on[l][k]``: keep head
    k of layer l; the layer's confidence gates over its remaining heads are renormalised to sum
    to 1, then the global gates over the remaining sources. Uses the trace only: no model run.
    A flip-averaged trace is ablated view by view and averaged, as its output was made.
    """
    if trace.views:
        return torch.stack([ablate(v, sources_on, heads_on) for v in trace.views]).mean(0)
    if len(sources_on) != len(trace.sources):
        raise ValueError(f"{len(sources_on)} source flags for {len(trace.sources)} sources")
    if not any(sources_on):
        raise ValueError("switch at least one source on")
    scores = []
    for l, layer in enumerate(trace.layers):
        if heads_on is None or all(heads_on[l]):
            scores.append(layer.hypothesis)
            continue
        keep = torch.tensor(heads_on[l], dtype=torch.bool)
        if not keep.any():
            raise ValueError(f"layer {layer.name}: keep at least one head, or switch the layer off")
        g = layer.confidence_gates * keep
        g = g / g.sum(1, keepdim=True)
        scores.append(torch.einsum("bk,bkm->bm", g, layer.head_hypotheses))
    scores.append(trace.net_output)
    on = torch.tensor(sources_on, dtype=torch.float32)
    gates = trace.global_gates * on
    return fuse(gates / gates.sum(1, keepdim=True), torch.stack(scores, 1))  # [6] over the sources left on


def trace_arrays(trace: Trace, i: int | None = None) -> dict[str, np.ndarray]:
    """Every tensor of the trace as named numpy arrays (optionally one image ``i``)."""
    sel = (lambda t: t[i]) if i is not None else (lambda t: t)
    out = {"output": sel(trace.output), "net_output": sel(trace.net_output),
           "global_gates": sel(trace.global_gates), "contributions": sel(trace.contributions)}
    if trace.layers:
        out["global_pre_tanh"] = sel(trace.global_pre_tanh)
    for layer in trace.layers:
        for f in LAYER_FIELDS:
            out[f"{layer.name}/{f}"] = sel(getattr(layer, f))
    return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


def trace_to_npz(trace: Trace, i: int | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k.replace("/", "__"): v for k, v in trace_arrays(trace, i).items()})
    return buf.getvalue()


def trace_to_json(trace: Trace, classes: Sequence[str], i: int | None = None, extra: dict | None = None) -> str:
    doc = {"sources": trace.sources, "classes": list(classes),
           **{k: v.tolist() for k, v in trace_arrays(trace, i).items()}, **(extra or {})}
    return json.dumps(doc)


def predict_all(model: AttendAndRectify, images: torch.Tensor, meta: dict[str, Any], batch_size: int = 250,
                progress=None, tta: TTALike | None = None) -> dict[str, np.ndarray]:
    """Fused and network-only predictions for a whole uint8 image tensor, in batches.

    ``progress(fraction)`` is called after each batch (a progress bar's update function);
    ``tta`` as for :func:`inspect`.
    """
    device = next(model.parameters()).device
    aug = resolve_tta(tta, meta)
    fused, net = [], []
    n = len(images)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = preprocess(images[start:start + batch_size], meta).to(device)
            t = model.trace(x, flip=aug.flip, shift=aug.shift)
            fused.append(t.output.argmax(1).cpu())
            net.append(t.net_output.argmax(1).cpu())
            if progress is not None:
                progress(min(1.0, (start + batch_size) / n))
    return {"fused": torch.cat(fused).numpy(), "net": torch.cat(net).numpy()}


OUTCOMES = ("all", "correct", "wrong", "rectified", "spoiled")


def outcome_masks(labels, fused_pred, net_pred) -> dict:
    """Per image, the one definition of each outcome: 'correct' / 'wrong' (the fused output), 'rectified'
    (network wrong, fused right), 'spoiled' (network right, fused wrong), and 'network right'.
    NumPy arrays or tensors alike; the evaluator, the analysis and the app's filters all count with it."""
    fused_ok, net_ok = fused_pred == labels, net_pred == labels
    return {"correct": fused_ok, "wrong": ~fused_ok, "rectified": fused_ok & ~net_ok, "spoiled": ~fused_ok & net_ok,
            "network right": net_ok}


def filter_indices(labels: np.ndarray, preds: dict[str, np.ndarray] | None, class_index: int | None = None,
                   outcome: str = "all") -> np.ndarray:
    """Indices of images of one class (or any) with one outcome.

    Outcomes: 'correct' / 'wrong' (fused output), 'rectified' (network wrong, fused right),
    'spoiled' (network right, fused wrong). Anything but 'all' needs ``preds``.
    """
    keep = np.ones(len(labels), dtype=bool)
    if class_index is not None:
        keep &= labels == class_index
    if outcome != "all":
        if preds is None:
            raise ValueError(f"filtering by {outcome!r} needs the model's predictions")
        keep &= outcome_masks(labels, preds["fused"], preds["net"])[outcome]
    return np.nonzero(keep)[0]
