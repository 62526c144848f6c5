"""Attention over training: a fixed probe set's full trace and every source's accuracy, per epoch.

The trainer appends one record per epoch and rewrites ``NAME.history.safetensors`` next to the
checkpoint (tensors stacked over epochs, a JSON header; no pickle). :func:`load_history` reads it
back for the app. Attention maps are sum-pooled to at most ``MAP_SIDE`` pixels a side (they still
sum to 1) and stored as uint8 relative to each map's maximum, so that 50 epochs of 32 probe images with
three attended layers of four heads stay under 4 MB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .inference import probabilities

FORMAT = "attend-rectify-history/1"
MAP_SIDE = 16
PROBE_SIZE = 32


def history_path(checkpoint: str | Path) -> Path:
    """``checkpoints/NAME.safetensors`` → ``checkpoints/NAME.history.safetensors``."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(stem + ".history.safetensors")


def probe_indices(labels: torch.Tensor, n: int = PROBE_SIZE, seed: int = 0) -> torch.Tensor:
    """``n`` positions in ``labels``, stratified by class: classes in a seeded order, one image of
    each in turn (so 32 probes of CIFAR-10 cover every class 3-4 times, of CIFAR-100 32 classes)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    order = classes[torch.randperm(len(classes), generator=g)]
    pools = [torch.nonzero(labels == c).flatten() for c in order]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    picked, r = [], 0
    while len(picked) < min(n, len(labels)):
        for p in pools:
            if r < len(p) and len(picked) < n:
                picked.append(int(p[r]))
        r += 1
    return torch.tensor(picked, dtype=torch.int64)


def quantize_maps(maps: torch.Tensor, side: int = MAP_SIDE) -> torch.Tensor:
    """Maps (..., h, w) that sum to 1 → uint8 maps at most ``side`` a side.

    Pooling sums blocks of pixels, so a pooled map still sums to 1; each map is stored relative
    to its own maximum (255), which keeps faint early-epoch maps as legible as sharp late ones;
    :func:`dequantize_maps` restores the sum of 1."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    m = maps.float().reshape(-1, 1, h, w)
    if max(h, w) > side:
        k = -(-max(h, w) // side)
        m = F.avg_pool2d(m, k) * k * k
    m = m.reshape(*lead, *m.shape[-2:])
    scale = m.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return torch.round(m / scale * 255).to(torch.uint8)


def dequantize_maps(q: torch.Tensor) -> torch.Tensor:
    q = q.float()
    return q / q.sum(dim=(-2, -1), keepdim=True)


@dataclass
class History:
    """Per-epoch record of one training run (E epochs, P probes, S sources incl. ``network``).

    ``outputs`` are the sources followed by ``fused``: ``predictions``/``true_class_prob`` are
    (E, P, S+1), ``val_accuracy`` (E, S+1). ``attention_maps[layer]`` is (E, P, K, h, w) and sums
    to 1 per map; ``confidence_gates[layer]`` (E, P, K); ``global_gates`` (E, P, S);
    ``mean_global_gates`` (E, S), the mean over the validation split.
    """

    epochs: list[int]
    sources: list[str]
    classes: list[str]
    probe_index: list[int]  # positions in the validation split
    probe_labels: list[int]
    attention_maps: dict[str, torch.Tensor]
    confidence_gates: dict[str, torch.Tensor]
    global_gates: torch.Tensor
    predictions: torch.Tensor
    true_class_prob: torch.Tensor
    val_accuracy: torch.Tensor
    mean_global_gates: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> list[str]:
        return [*self.sources, "fused"]

    @property
    def layers(self) -> list[str]:
        return [s for s in self.sources if s != "network"]


class HistoryRecorder:
    """Collects one record per epoch and rewrites the history file after each (atomically)."""

    def __init__(self, path: str | Path, sources: list[str], classes: list[str], probe_index: torch.Tensor,
                 probe_labels: torch.Tensor, info: dict[str, Any] | None = None):
        self.path = Path(path)
        self.sources, self.classes = list(sources), list(classes)
        self.probe_index, self.probe_labels = probe_index.tolist(), probe_labels.tolist()
        self.info = dict(info or {})
        self.records: list[dict[str, Any]] = []

    def resume(self, upto_epoch: int) -> list[int]:
        """Keep the records of a previous run's history file up to ``upto_epoch`` (its last saved state).

        Returns the trained epochs the file lacks (lost, or cut short): they cannot be recorded again
        without retraining, so the caller says so rather than let the history skip them unseen."""
        if upto_epoch == 0:
            return []
        if not self.path.is_file():
            return list(range(1, upto_epoch + 1))
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            header = json.loads(f.metadata()["history"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if header["probe_index"] != self.probe_index or header["sources"] != self.sources:
            raise ValueError(f"{self.path} records another probe set or model; remove it to start the history anew")
        for e, epoch in enumerate(header["epochs"]):
            if epoch > upto_epoch:
                break
            rec = {"epoch": epoch, "val_accuracy": tensors["val_accuracy"][e],
                   "mean_global_gates": tensors["mean_global_gates"][e]}
            for key in ("global_gates", "predictions", "true_class_prob"):
                rec[key] = tensors[key][e]
            for layer in self.layers:
                rec[f"maps.{layer}"] = tensors[f"attention_maps.{layer}"][e]
                rec[f"gates.{layer}"] = tensors[f"confidence_gates.{layer}"][e]
            self.records.append(rec)
        kept = {r["epoch"] for r in self.records}
        return [e for e in range(1, upto_epoch + 1) if e not in kept]

    @property
    def layers(self) -> list[str]:
        return [s for s in self.sources if s != "network"]

    def append(self, epoch: int, trace, val_source_accuracy: list[float], mean_global_gates: list[float]) -> None:
        """Record epoch ``epoch`` from the probe images' trace and the validation figures."""
        labels = torch.tensor(self.probe_labels)
        scores = [l.hypothesis for l in trace.layers] + [trace.net_output, trace.output]
        probs = torch.stack([probabilities(s) for s in scores], dim=1)  # (P, S+1, M)
        rec = {"epoch": epoch,
               "val_accuracy": torch.tensor(val_source_accuracy, dtype=torch.float32),
               "mean_global_gates": torch.tensor(mean_global_gates, dtype=torch.float32),
               "global_gates": trace.global_gates.float().cpu().to(torch.float16),
               "predictions": probs.argmax(2).cpu().to(torch.int16),
               "true_class_prob": probs[torch.arange(len(labels)), :, labels].cpu().to(torch.float16)}
        for layer in trace.layers:
            rec[f"maps.{layer.name}"] = quantize_maps(layer.attention_maps.detach().cpu())
            rec[f"gates.{layer.name}"] = layer.confidence_gates.float().cpu().to(torch.float16)
        self.records.append(rec)
        self.save()

    def save(self) -> None:
        from safetensors.torch import save_file

        def stack(key):
            return torch.stack([r[key] for r in self.records]).contiguous()

        tensors = {k: stack(k) for k in ("val_accuracy", "mean_global_gates", "global_gates", "predictions",
                                         "true_class_prob")}
        for layer in self.layers:
            tensors[f"attention_maps.{layer}"] = stack(f"maps.{layer}")
            tensors[f"confidence_gates.{layer}"] = stack(f"gates.{layer}")
        header = {"format": FORMAT, "epochs": [r["epoch"] for r in self.records], "sources": self.sources,
                  "classes": self.classes, "probe_index": self.probe_index, "probe_labels": self.probe_labels,
                  "map_side": MAP_SIDE, **self.info}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"history": json.dumps(header)})
        tmp.replace(self.path)


def load_history(source: str | Path | bytes, name: str | None = None) -> History:
    """Read a history file written by the trainer (a path, or the file's bytes, as uploaded);
    raises ValueError naming what is wrong."""
    from safetensors.torch import load

    from .checkpoint import read_header

    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), name or "uploaded history"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no training history at {path} (checkpoints trained before histories were "
                                    f"recorded, and converted ones, have none)")
        data, name = path.read_bytes(), name or path.name
    try:
        header = json.loads((read_header(data, len(data), name).get("__metadata__") or {})["history"])
        tensors = load(data)
    except Exception as e:  # a missing key, bad JSON, or safetensors' own SafetensorError
        raise ValueError(f"{name} is not a readable training history ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"{name} has format {found!r}, expected {FORMAT!r}")
    try:  # an upload may be any file: a field or tensor missing, or of the wrong kind, is named, not a traceback
        sources = list(header["sources"])
        layers = [s for s in sources if s != "network"]
        info = {k: v for k, v in header.items() if k not in ("format", "epochs", "sources", "classes",
                                                             "probe_index", "probe_labels")}
        return History(
            epochs=list(header["epochs"]), sources=sources, classes=list(header["classes"]),
            probe_index=list(header["probe_index"]), probe_labels=list(header["probe_labels"]),
            attention_maps={l: dequantize_maps(tensors[f"attention_maps.{l}"]) for l in layers},
            confidence_gates={l: tensors[f"confidence_gates.{l}"].float() for l in layers},
            global_gates=tensors["global_gates"].float(), predictions=tensors["predictions"].long(),
            true_class_prob=tensors["true_class_prob"].float(), val_accuracy=tensors["val_accuracy"],
            mean_global_gates=tensors["mean_global_gates"], info=info)
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} is not a complete training history (missing or malformed: {e})") from e


def mismatch(history: History, meta: dict[str, Any]) -> str | None:
    """Why ``history`` cannot be the training history of the checkpoint with metadata ``meta``, or None.

    A history names no checkpoint (it is written before the checkpoint exists), so it is checked by
    what both record: the classes, the sources (the attended layers), the validation split and the
    number of epochs. Two seeds of one recipe pass alike: the file names pair those."""
    from .model import ModelConfig

    if meta.get("classes") is not None and list(meta["classes"]) != list(history.classes):
        return "its classes differ from the checkpoint's"
    if meta.get("config") is not None:
        sources = [*ModelConfig.from_dict(meta["config"]).attended, "network"]
        if sources != history.sources:
            return f"it traced the sources {', '.join(history.sources)}; the checkpoint has {', '.join(sources)}"
    ours, theirs = meta.get("validation_split") or {}, history.info.get("validation_split") or {}
    for key in ("train_digest", "index_digest"):
        if ours.get(key) and theirs.get(key) and ours[key] != theirs[key]:
            return "it was recorded on another training set or validation split than the checkpoint's"
    if meta.get("epochs_trained") and history.epochs and history.epochs[-1] > meta["epochs_trained"]:
        return f"it records epoch {history.epochs[-1]}; the checkpoint was trained for {meta['epochs_trained']}"
    return None


def traced_other_weights(history: History, meta: dict[str, Any]) -> str | None:
    """A note when the history traced other weights than the checkpoint holds, else None.

    With a moving average the trainer traces the average every epoch, and ships the raw weights
    instead only when they score higher at the end; the last epoch's maps then are not the file's."""
    if history.info.get("model") == "ema" and meta.get("saved_weights") == "raw":
        return ("Every epoch here traces the moving average of the weights; this file holds the raw weights, "
                "which scored higher on validation at the end, so its own maps can differ from the last epoch's.")
    return None


def probe_images(history: History, dataset) -> torch.Tensor | None:
    """The probe images (P, 3, H, W) uint8, carved from ``dataset`` when it is the training folder
    the history was recorded on (same content digest); None for any other data set.

    Histories hold no images themselves: the training data stay with whoever has them."""
    from . import data as D

    split = history.info.get("validation_split") or {}
    if not split.get("train_digest") or D.content_digest(dataset) != split["train_digest"]:
        return None
    _, val_index = D.stratified_split(dataset.labels, split["size"], split["seed"])
    return dataset.images[val_index[torch.tensor(history.probe_index)]]
