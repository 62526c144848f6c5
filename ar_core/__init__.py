"""Attend & Rectify: gated attention (Rodríguez et al., ECCV 2018) as a small PyTorch library.

    >>> import ar_core
    >>> model, meta = ar_core.load_checkpoint("checkpoints/cifar10-wrn16x4-ad3aw4.safetensors")
    >>> trace = model.trace(ar_core.inference.preprocess(uint8_images, meta))  # maps, gates, fusion
"""

from . import data, inference, precision

from .attention import AttentionModule, GlobalGate, fuse, fusion_contributions, inter_head_regularizer
from .checkpoint import CheckpointError, available_checkpoints, load_checkpoint, save_checkpoint
from .history import History, history_path, load_history
from .model import AttendAndRectify, LayerTrace, ModelConfig, Trace, build_model
from .wrn import WideResNet

__all__ = [
    "AttendAndRectify", "AttentionModule", "CheckpointError", "GlobalGate", "History", "LayerTrace", "ModelConfig",
    "Trace", "WideResNet", "available_checkpoints", "build_model", "fuse", "fusion_contributions", "history_path",
    "inter_head_regularizer", "load_checkpoint", "load_history", "save_checkpoint",
]
