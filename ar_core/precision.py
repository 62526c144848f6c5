"""Where and in which precision the model runs: one policy for the trainer, the evaluator, the
benchmark and the app, so the numbers each reports come from the same arithmetic.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch

AMP_MODES = ("auto", "on", "off")


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_options() -> list[str]:
    """The device names this machine can run on: 'auto', 'cpu', then 'cuda' and 'mps' when present."""
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if mps_available() else [])


def pick_device(name: str = "auto") -> torch.device:
    """A device by name; 'auto' is CUDA, then Apple's MPS, then the CPU. A named device this machine
    lacks is a ValueError that says so, rather than a failure deep inside the first model call."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name}, but PyTorch sees no CUDA device (torch.cuda.is_available() is False); "
                         f"check the driver with nvidia-smi and that torch is a CUDA build")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not mps_available():
        raise ValueError(f"device {name}, but this PyTorch sees no Apple GPU (MPS)")
    return device


def device_arg(name: str) -> str:
    """argparse ``type`` of every command line's ``--device``: one check, one message, exit status 2."""
    import argparse

    try:
        pick_device(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without it bf16 is emulated
    and slower than float32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_for(device: torch.device, mode: str = "auto") -> tuple[Callable[[], ContextManager], str]:
    """(context factory, precision name) for running the model on ``device``.

    auto: float16 autocast on CUDA, bfloat16 on CPUs with native bf16, float32 elsewhere;
    on: the same, but bfloat16 on any CPU; off: float32. A float16 result needs a gradient
    scaler when training.
    """
    if mode not in AMP_MODES:
        raise ValueError(f"amp mode must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode != "off":
        if device.type == "cuda":
            return (lambda: torch.autocast("cuda", dtype=torch.float16)), "float16"
        if device.type == "cpu" and (mode == "on" or native_bf16()):
            return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), "bfloat16"
    return contextlib.nullcontext, "float32"
