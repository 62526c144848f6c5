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
# The shipped checkpoints, by name; files live in CHECKPOINT_DIR. The first is the app's default; the
# "-seed1" pair is the CIFAR-10 pair trained again with another seed, to read the paper's claim over two.
SHIPPED = (
    "cifar10-wrn16x4-ad3aw4",
    "cifar10-wrn16x4-baseline",
    "cifar100-wrn16x4-ad3aw4",
    "cifar100-wrn16x4-baseline",
    "cifar10-wrn16x4-ad3aw4-seed1",
    "cifar10-wrn16x4-baseline-seed1",
)
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says why and what to do."""


def available_checkpoints() -> dict[str, Path]:
    """Shipped checkpoints present on disk, by name."""
    return {name: CHECKPOINT_DIR / f"{name}.safetensors" for name in SHIPPED
            if (CHECKPOINT_DIR / f"{name}.safetensors").is_file()}


def locate(source: str | Path | bytes) -> Path | bytes:
    """``source`` as given, or the shipped checkpoint of that name when no such file exists."""
    if isinstance(source, (bytes, bytearray)) or Path(source).exists() or str(source) not in SHIPPED:
        return source if isinstance(source, (bytes, bytearray)) else Path(source)
    return CHECKPOINT_DIR / f"{source}.safetensors"


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


MAX_HEADER_BYTES = 16 * 1024 * 1024  # a real header is a few KB; anything near this is hostile


def read_header(head: bytes, size: int, name: str) -> dict[str, Any]:
    """Parse the safetensors header from the file's first bytes."""
    if head[:8].startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{name} is a PyTorch pickle, not a safetensors checkpoint; pickles are never loaded here. "
            f"If it is a state_dict of the reference implementation, convert it with "
            f"`python -m ar_core.convert --reference {name} --out model.safetensors`.")
    if size < 8:
        raise CheckpointError(f"{name} is not a readable safetensors file (truncated or corrupt?): only {size} bytes")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise CheckpointError(f"{name} is not a readable safetensors file (truncated or corrupt?): its header claims "
                              f"{n} bytes in a {size}-byte file")
    try:
        header = json.loads(head[8:8 + n])
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{name} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} is not a readable safetensors file (truncated or corrupt?): bad header")
    return header


def _config_and_meta(header: dict[str, Any], name: str) -> tuple[ModelConfig, dict[str, Any]]:
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{name} is a safetensors file but not an Attend & Rectify checkpoint "
                              f"(format {metadata.get('format')!r}, expected {FORMAT!r}); save models with "
                              f"ar_core.save_checkpoint or convert them with python -m ar_core.convert")
    try:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        meta = json.loads(metadata.get("meta", "{}"))
        if not isinstance(meta, dict):
            raise TypeError("metadata is not a JSON object")
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{name} has a damaged config or metadata header: {e}") from e
    meta["config"] = config.to_dict()
    return config, meta


def read_metadata(source: str | Path | bytes, name: str | None = None) -> dict[str, Any]:
    """A checkpoint's metadata (its config under ``config``), reading the header only."""
    if isinstance(source, (bytes, bytearray)):
        name = name or "uploaded checkpoint"
        header = read_header(bytes(source[:8 + MAX_HEADER_BYTES]), len(source), name)
    else:
        path = locate(source)
        name = name or path.name
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}")
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(min(n, MAX_HEADER_BYTES))
        header = read_header(head, path.stat().st_size, name)
    return _config_and_meta(header, name)[1]


def read_checkpoint(source: str | Path | bytes, name: str | None = None
                    ) -> tuple[ModelConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """Parse and verify a checkpoint (a path, or the file's bytes) without building a model."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), name or "uploaded checkpoint"
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}")
        data, name = path.read_bytes(), name or path.name
    header = read_header(data, len(data), name)
    config, meta = _config_and_meta(header, name)
    try:
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{name} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    expected = (header.get("__metadata__") or {}).get("weights_sha256")
    if expected and _digest(tensors) != expected:
        raise CheckpointError(f"{name} is corrupt: its weights do not match the digest stored in it; "
                              f"download or copy the file again")
    meta["weights_sha256"] = expected or _digest(tensors)  # the weights' identity, e.g. for result caches
    return config, meta, tensors


def load_checkpoint(path: str | Path | bytes, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, name: str | None = None
                    ) -> tuple[AttendAndRectify, dict[str, Any]]:
    """Load a checkpoint → (model in eval mode on ``device``, in channels_last memory format, metadata).

    channels_last is the layout the trainer and the evaluator run in, and oneDNN's convolutions are
    faster in it on a CPU once a batch has more than a few images (an 18-view trace: about a sixth).

    ``path`` is a file, the name of a shipped checkpoint, or the file's bytes (an upload, read from
    memory and never written to disk).
    """
    path = locate(path)
    config, meta, tensors = read_checkpoint(path, name)
    name = name or (Path(path).name if not isinstance(path, (bytes, bytearray)) else "uploaded checkpoint")
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
        raise CheckpointError(f"{name} does not match the model its config describes: "
                              + "; ".join(parts))
    model.load_state_dict(tensors)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{name} holds non-finite weights in {bad[:3]}; it cannot predict")
    return model.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval(), meta
