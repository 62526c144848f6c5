"""Checkpoints as safetensors: weights plus JSON config and metadata in the header. No pickle.

Header ``__metadata__`` keys: ``format`` (``attend-rectify/1``), ``config`` (a ModelConfig as
JSON), ``meta`` (classes, normalisation, dataset, split, recipe, accuracy, ... as JSON) and
``weights_sha256`` (a digest of every tensor, so that a corrupted file is caught, not run).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .model import AttendAndRectify, ModelConfig, build_model

FORMAT = "attend-rectify/1"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# The shipped checkpoints, by name; files live in CHECKPOINT_DIR.
SHIPPED = (
    "cifar10-wrn16x4-ad3aw4",
    "cifar10-wrn16x4-baseline",
    "cifar100-wrn16x4-ad3aw4",
    "cifar100-wrn16x4-baseline",
)
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says why and what to do."""


def available_checkpoints() -> dict[str, Path]:
    """Shipped checkpoints present on disk, by name."""
    return {name: CHECKPOINT_DIR / f"{name}.safetensors" for name in SHIPPED
            if (CHECKPOINT_DIR / f"{name}.safetensors").is_file()}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: AttendAndRectify, path: str | Path, meta: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` and ``meta`` to ``path``; ``dtype`` (e.g. float16) shrinks float weights."""
    from safetensors.torch import save_file

    if model.config is None:
        raise ValueError("model has no ModelConfig; build it with ar_core.build_model")
    meta = dict(meta or {})
    classes = meta.get("classes")
    if classes is not None and len(classes) != model.config.num_classes:
        raise ValueError(f"{len(classes)} class names for a {model.config.num_classes}-class model")
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    header = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), "meta": json.dumps(meta),
              "weights_sha256": _digest(tensors)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """Parse and verify a checkpoint file without building a model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path.name} is a PyTorch pickle, not a safetensors checkpoint; pickles are never loaded here. "
            f"If it is a state_dict of the reference implementation, convert it with "
            f"`python -m ar_core.convert --reference {path.name} --out model.safetensors`.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is a safetensors file but not an Attend & Rectify checkpoint "
                              f"(format {header.get('format')!r}, expected {FORMAT!r}); save models with "
                              f"ar_core.save_checkpoint or convert them with python -m ar_core.convert")
    try:
        config = ModelConfig.from_dict(json.loads(header["config"]))
        meta = json.loads(header.get("meta", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path.name} has a damaged config or metadata header: {e}") from e
    expected = header.get("weights_sha256")
    if expected and _digest(tensors) != expected:
        raise CheckpointError(f"{path.name} is corrupt: its weights do not match the digest stored in it; "
                              f"download or copy the file again")
    meta["config"] = config.to_dict()
    return config, meta, tensors


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (with its config under ``config``) from the header alone."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header.get("meta", "{}"))
        meta["config"] = ModelConfig.from_dict(json.loads(header["config"])).to_dict()
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path.name} has no readable Attend & Rectify header: {e}") from e
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[AttendAndRectify, dict[str, Any]]:
    """Load a checkpoint (a path, or the name of a shipped one) → (model in eval mode, metadata)."""
    if not Path(path).exists() and str(path) in SHIPPED:
        path = CHECKPOINT_DIR / f"{path}.safetensors"
    config, meta, tensors = read_checkpoint(path)
    model = build_model(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} wrong shapes (e.g. {wrong[:3]})")
        raise CheckpointError(f"{Path(path).name} does not match the model its config describes: "
                              + "; ".join(parts))
    model.load_state_dict(tensors)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{Path(path).name} holds non-finite weights in {bad[:3]}; it cannot predict")
    return model.to(device=device, dtype=dtype).eval(), meta
