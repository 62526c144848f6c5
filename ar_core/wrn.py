"""Pre-activation Wide ResNet for 32x32 inputs (Zagoruyko & Komodakis, 2016).

The network returns its features as a dict so that attention modules can read them by name:
``group1``, ``group2``, ``group3`` are the BN-ReLU pre-activations that the next stage consumes
(``group3`` is the final feature map Z^L, also under ``last``), ``logits`` is the network's own
output. Nothing is kept on the module between calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class Block(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus a shortcut.

    ``shortcut_from_input``: the 1x1 projection shortcut reads the block's raw input, as the
    reference implementation does; the WRN paper's code reads the BN-ReLU pre-activation.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float, shortcut_from_input: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.dropout = dropout
        self.shortcut_from_input = shortcut_from_input
        self.shortcut = None
        if in_ch != out_ch or stride != 1:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            nn.init.kaiming_normal_(self.shortcut.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the block output and its pre-activation relu(bn1(x))."""
        a = F.relu(self.bn1(x))
        y = F.relu(self.bn2(self.conv1(a)))
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, training=self.training)
        y = self.conv2(y)
        if self.shortcut is None:
            return y + x, a
        return y + self.shortcut(x if self.shortcut_from_input else a), a


class WideResNet(nn.Module):
    """WRN-depth-width: depth = 6n + 4, three groups of n blocks, widths 16k, 32k, 64k.

    ``reference_layout`` reproduces prlz77/attend-and-rectify's variant exactly (a BN-ReLU
    after the stem convolution, projection shortcuts from the raw block input), so that its
    trained weights can be converted; new models use the standard layout.
    """

    def __init__(self, depth: int = 16, width: int = 4, num_classes: int = 10, dropout: float = 0.0,
                 reference_layout: bool = False):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.channels = {"group1": widths[0], "group2": widths[1], "group3": widths[2], "last": widths[2]}
        self.stem = _conv3x3(3, 16)
        self.stem_bn = nn.BatchNorm2d(16) if reference_layout else None
        groups = []
        in_ch = 16
        for g, out_ch in enumerate(widths):
            blocks = [Block(in_ch if i == 0 else out_ch, out_ch, (1 if g == 0 else 2) if i == 0 else 1,
                            dropout, shortcut_from_input=reference_layout) for i in range(n)]
            groups.append(nn.ModuleList(blocks))
            in_ch = out_ch
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        # Identity taps give each named feature map a module of its own, so that layer-attribution
        # tools (Grad-CAM) can hook it. They hold no weights and add nothing to the state_dict.
        self.taps = nn.ModuleDict({name: nn.Identity() for name in ("group1", "group2", "group3")})
        self.last = "group3"
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        if self.stem_bn is not None:
            x = F.relu(self.stem_bn(x))
        features: dict[str, torch.Tensor] = {}
        for g, group in enumerate(self.groups):
            for i, block in enumerate(group):
                x, a = block(x)
                if i == 0 and g > 0:  # the first block of group g+1 pre-activates group g's output
                    features[f"group{g}"] = self.taps[f"group{g}"](a)
        last = self.taps["group3"](F.relu(self.bn(x)))
        features["group3"] = features["last"] = last
        features["logits"] = self.fc(last.mean(dim=(2, 3)))
        return features
