"""The gated-attention network: any CNN backbone plus attention modules, global gate and fusion.

A backbone is any module whose forward returns a dict of named feature maps that includes
``last`` (Z^L, read by the global gate) and ``logits`` (the network's own output). Attention
modules attach to whichever names ``attend`` lists, which is what makes the method
architecture-independent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .attention import AttentionModule, GlobalGate, fusion_contributions, inter_head_regularizer
from .tta import TTA
from .wrn import WideResNet

BACKBONES = ("wrn", "resnet18")
# Attended layers, shallow to deep, for each attention depth AD (docs/method.md, item 9).
_ATTENDABLE = {"wrn": ("group1", "group2", "group3"), "resnet18": ("layer2", "layer3", "layer4")}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored as JSON inside every checkpoint."""

    num_classes: int = 10
    backbone: str = "wrn"
    depth: int = 16
    width: int = 4
    dropout: float = 0.0
    reference_layout: bool = False  # WRN variant of the reference implementation (see wrn.py)
    attention_depth: int = 3  # AD: 0 is the plain baseline
    attention_width: int = 4  # AW = K, heads per attended layer
    kernel_size: int = 1  # heads and gates: 1 (paper text) or 3 (reference implementation)
    reg_weight: float = 1e-3  # λ of the inter-head regulariser

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        if not 0 <= self.attention_depth <= 3:
            raise ValueError(f"attention_depth must be 0..3, got {self.attention_depth}")
        if self.attention_depth and self.attention_width < 1:
            raise ValueError(f"attention_width must be >= 1, got {self.attention_width}")
        if self.kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3, got {self.kernel_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")

    @property
    def attended(self) -> tuple[str, ...]:
        layers = _ATTENDABLE[self.backbone]
        return layers[len(layers) - self.attention_depth:]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class LayerTrace:
    """One attended layer l for a batch of B images (K heads, M classes)."""

    name: str
    attention_maps: torch.Tensor  # H^l (B, K, h, w): where each head looked; each map sums to 1
    head_hypotheses: torch.Tensor  # o^l_k (B, K, M): each head's class scores
    confidence_gates: torch.Tensor  # g^l (B, K): trust in each head; sums to 1
    hypothesis: torch.Tensor  # o^l (B, M): the gated mix of the heads
    gate_pre_tanh: torch.Tensor  # (B, K): what tanh receives in [3]; beyond ±2 the gate barely moves


# The per-image tensors of a LayerTrace, in ModuleOutput's order.
LAYER_FIELDS = ("attention_maps", "head_hypotheses", "confidence_gates", "hypothesis", "gate_pre_tanh")


@dataclass
class Trace:
    """Everything the model computed for a batch, as the app plots it.

    Sources are ordered as ``sources``: the attended layers shallow to deep, then ``network``.
    """

    layers: list[LayerTrace]
    net_output: torch.Tensor  # the network's own logits (B, M)
    global_gates: torch.Tensor  # g_O (B, N+1), sums to 1
    contributions: torch.Tensor  # g_O^s · log_softmax(o^s), (B, N+1, M); sums over sources to output
    output: torch.Tensor  # fused log-scores (B, M); prediction = argmax, probabilities = softmax
    global_pre_tanh: torch.Tensor  # (B, N+1): what tanh receives in [5]; (B, 0) without attention
    sources: list[str] = field(default_factory=list)
    # With test-time augmentation: each view's trace (the image itself first; maps moved back into
    # the image's frame); every tensor above is then their mean. Empty for a single view.
    views: list["Trace"] = field(default_factory=list)
    augmentation: str = "none"  # the test-time augmentation's name (ar_core.tta)

    def map(self, fn) -> "Trace":
        """A copy with ``fn`` applied to every tensor (e.g. ``lambda t: t.cpu()``)."""
        layers = [LayerTrace(l.name, *(fn(getattr(l, f)) for f in LAYER_FIELDS)) for l in self.layers]
        return Trace(layers, fn(self.net_output), fn(self.global_gates), fn(self.contributions),
                     fn(self.output), fn(self.global_pre_tanh), list(self.sources), [v.map(fn) for v in self.views],
                     self.augmentation)


def mean_of_views(views: Sequence[Trace]) -> Trace:
    """The element-wise mean of traces of the same images seen differently (test-time augmentation).

    Means keep every map and gate summing to 1 and the contributions summing to the output, so
    every view of the app reads the averaged trace as it reads a single one. The pre-tanh values
    are the mean of the views' too (the gates are not recomputed from them).
    """
    def mean(get):
        return torch.stack([get(v) for v in views]).mean(0)

    first = views[0]
    layers = [LayerTrace(l.name, *(mean(lambda v, i=i, f=f: getattr(v.layers[i], f)) for f in LAYER_FIELDS))
              for i, l in enumerate(first.layers)]
    return Trace(layers, mean(lambda v: v.net_output), mean(lambda v: v.global_gates),
                 mean(lambda v: v.contributions), mean(lambda v: v.output), mean(lambda v: v.global_pre_tanh),
                 list(first.sources), list(views))


class AttendAndRectify(nn.Module):
    """Backbone + one AttentionModule per attended layer + global gate + fusion.

    ``model(x)`` gives the fused log-scores (B, M); in training mode ``(scores, λ·R)``.
    ``model.trace(x)`` gives the same computation as a :class:`Trace`.
    """

    def __init__(self, backbone: nn.Module, channels: dict[str, int], attend: Sequence[str],
                 num_classes: int, attention_width: int = 4, kernel_size: int = 1, reg_weight: float = 1e-3,
                 config: ModelConfig | None = None):
        super().__init__()
        missing = [name for name in (*attend, "last") if name not in channels]
        if missing:
            raise ValueError(f"backbone has no feature map named {missing}; it has {sorted(channels)}")
        self.backbone = backbone
        self.attend = tuple(attend)
        self.num_classes = num_classes
        self.reg_weight = reg_weight
        self.config = config
        self.attention = nn.ModuleDict(
            {name: AttentionModule(channels[name], num_classes, attention_width, kernel_size) for name in attend})
        self.global_gate = GlobalGate(channels["last"], len(attend) + 1) if attend else None

    @property
    def sources(self) -> list[str]:
        return [*self.attend, "network"]

    def feature_module(self, name: str) -> nn.Module:
        """The module whose output is the feature map ``name`` (for Grad-CAM and other layer tools)."""
        if name == "last":
            name = getattr(self.backbone, "last", name)
        taps = getattr(self.backbone, "taps", None)
        if taps is not None and name in taps:
            return taps[name]
        body = getattr(self.backbone, "body", self.backbone)
        graph = getattr(body, "graph", None)
        if graph is not None:  # a traced backbone: the stage's last called module yields its output
            called = [n.target for n in graph.nodes if n.op == "call_module"]
            inside = [t for t in called if t == name or t.startswith(name + ".")]
            if not inside:
                raise ValueError(f"no module produces the feature map {name!r}")
            name = inside[-1]
        try:
            return body.get_submodule(name)
        except AttributeError:
            raise ValueError(f"no module produces the feature map {name!r}") from None

    def _run(self, x: torch.Tensor):
        features = self.backbone(x)
        modules = [self.attention[name](features[name]) for name in self.attend]
        net_output = features["logits"]
        if self.global_gate is None:  # AD = 0: the network alone, with gate 1 (and no tanh)
            global_gates = net_output.new_ones(net_output.shape[0], 1, dtype=torch.float32)
            pre_tanh = net_output.new_zeros(net_output.shape[0], 0, dtype=torch.float32)
        else:
            global_gates, pre_tanh = self.global_gate(features["last"])
        source_scores = torch.stack([m.hypothesis for m in modules] + [net_output.float()], dim=1)
        contributions = fusion_contributions(global_gates, source_scores)
        return modules, net_output, global_gates, contributions, pre_tanh

    def regularizer(self, attention_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """λ · mean_l R^l (zero without attention)."""
        if not attention_maps:
            return torch.zeros(())
        return self.reg_weight * torch.stack([inter_head_regularizer(h) for h in attention_maps]).mean()

    def forward(self, x: torch.Tensor):
        modules, _, _, contributions, _ = self._run(x)
        output = contributions.sum(dim=1)
        if self.training:
            return output, self.regularizer([m.attention_maps for m in modules]).to(output.device)
        return output

    def trace(self, x: torch.Tensor, flip: bool = False, shift: int = 0) -> Trace:
        """Every intermediate of the forward pass as a :class:`Trace`.

        Test-time augmentation, in one batched pass: ``flip=True`` adds the mirror images, and
        ``shift=s`` the images moved by 1..s pixels up, down, left and right (reflect-padded, as in
        training), for each of them. Every view's attention maps are moved back (flipped, and
        translated by the shift at their own resolution) so they align with the image; the result
        is the mean of the views' traces, all kept in ``views`` (the image itself first).
        """
        if flip or shift:
            offsets = tta_offsets(shift)
            views_in = [shifted(x, dy, dx, shift) for dy, dx in offsets]
            if flip:
                views_in += [v.flip(3) for v in views_in]
            every = self.trace(torch.cat(views_in))
            b = x.shape[0]
            views = [every.map(lambda t, j=j: t[j * b:(j + 1) * b]) for j in range(len(views_in))]
            for j, view in enumerate(views):
                dy, dx = offsets[j % len(offsets)]
                for layer in view.layers:
                    maps = layer.attention_maps.flip(3) if j >= len(offsets) else layer.attention_maps
                    layer.attention_maps = translate_maps(maps, dy, dx, x.shape[-2:])
            mean = mean_of_views(views)
            mean.augmentation = TTA(flip, shift).name
            return mean
        modules, net_output, global_gates, contributions, pre_tanh = self._run(x)
        layers = [LayerTrace(name, *m) for name, m in zip(self.attend, modules)]
        return Trace(layers, net_output.float(), global_gates, contributions, contributions.sum(dim=1), pre_tanh,
                     self.sources)


def tta_offsets(shift: int) -> list[tuple[int, int]]:
    """(dy, dx) of the shifted views: none, then ±1..±shift pixels along each axis."""
    return [(0, 0)] + [o for s in range(1, shift + 1) for o in ((-s, 0), (s, 0), (0, -s), (0, s))]


def shifted(x: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """The images with their content moved by (-dy, -dx): a window of the reflect-padded image."""
    if not (dy or dx):
        return x
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def translate_maps(maps: torch.Tensor, dy: int, dx: int, image_size) -> torch.Tensor:
    """Attention maps of a shifted view moved back into the image's frame.

    A shift of d input pixels is d·h/H pixels of an h-pixel map (a fraction on coarse maps):
    bilinear resampling, then each map is renormalised to sum to 1 (mass moved past the border is lost).
    """
    if not (dy or dx):
        return maps
    import torch.nn.functional as F

    b, k, h, w = maps.shape
    H, W = image_size
    theta = maps.new_tensor([[1.0, 0.0, -2.0 * dx / W], [0.0, 1.0, -2.0 * dy / H]]).float()
    grid = F.affine_grid(theta.expand(b * k, 2, 3), (b * k, 1, h, w), align_corners=False)
    moved = F.grid_sample(maps.reshape(b * k, 1, h, w).float(), grid, align_corners=False, padding_mode="zeros")
    moved = moved.reshape(b, k, h, w)
    return (moved / moved.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)).to(maps.dtype)


class _TorchvisionFeatures(nn.Module):
    """Wraps a torchvision classifier so that it returns named features (FX feature extraction)."""

    def __init__(self, model: nn.Module, return_nodes: dict[str, str], last: str):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor
        from torchvision.models.resnet import BasicBlock, Bottleneck

        # Residual blocks stay whole modules in the traced graph, so the last block of a stage is
        # a module whose output is that stage's feature map (what layer-attribution tools hook).
        self.body = create_feature_extractor(model, return_nodes=return_nodes,
                                             tracer_kwargs={"leaf_modules": [BasicBlock, Bottleneck]})
        self.last = last

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        features["last"] = features[self.last]
        return features


def build_model(config: ModelConfig) -> AttendAndRectify:
    """A freshly initialised model for ``config``."""
    if config.backbone == "wrn":
        backbone = WideResNet(config.depth, config.width, config.num_classes, config.dropout,
                              config.reference_layout)
        channels = backbone.channels
    else:
        from torchvision.models import resnet18

        nodes = {"layer2": "layer2", "layer3": "layer3", "layer4": "layer4", "fc": "logits"}
        backbone = _TorchvisionFeatures(resnet18(num_classes=config.num_classes), nodes, last="layer4")
        channels = {"layer2": 128, "layer3": 256, "layer4": 512, "last": 512}
    return AttendAndRectify(backbone, channels, config.attended, config.num_classes, config.attention_width,
                            config.kernel_size, config.reg_weight, config=config)
