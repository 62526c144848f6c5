"""The equations of "Attend and Rectify" (Rodríguez et al., ECCV 2018), one place each.

Numbers in brackets are the items of ``docs/method.md`` (the method in this project's words):

  [1] attention head      H^l   = spatial_softmax(W_H^l * Z^l)
  [2] output head         o^l_k = Σ_xy H^l_k ⊙ (W_O^l_k * Z^l)
  [3] confidence gate     g^l   = softmax_k(tanh(Σ_xy (W_g^l * Z^l)_k ⊙ H^l_k))
  [4] module hypothesis   o^l   = Σ_k g^l_k · o^l_k
  [5] global gate         g_O   = softmax(tanh(BN(W_G · GAP(Z^L))))
  [6] fusion              out   = Σ_s g_O^s · log_softmax(o^s)
  [8] regulariser         R^l   = mean(((P Pᵀ) ⊙ (1 − I))²),  P = avgpool2x2(H^l)

Everything here is a pure function of its inputs: no tensor is ever kept on a module, so one
model instance can serve many threads at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ModuleOutput(NamedTuple):
    """What one attention module computes for a batch (B images, K heads, M classes)."""

    attention_maps: torch.Tensor  # H^l, (B, K, h, w), each map sums to 1
    head_hypotheses: torch.Tensor  # o^l_k, (B, K, M) class scores
    confidence_gates: torch.Tensor  # g^l, (B, K), sums to 1 over k
    hypothesis: torch.Tensor  # o^l, (B, M)
    gate_pre_tanh: torch.Tensor  # the input of tanh in [3], (B, K): |x| > 2 pins the gate's tanh at ±1


class GlobalGateOutput(NamedTuple):
    gates: torch.Tensor  # g_O, (B, S), sums to 1
    pre_tanh: torch.Tensor  # BN(W_G · GAP(Z^L)), the input of tanh in [5], (B, S)


def _conv(in_ch: int, out_ch: int, kernel_size: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    return conv


class AttentionModule(nn.Module):
    """Attention head + output head + confidence gate for one attended feature map Z^l.

    ``kernel_size`` 1 follows the paper's text, 3 the reference implementation.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, kernel_size: int = 1):
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
        self.num_classes = num_classes
        self.width = width
        self.attention_head = _conv(in_channels, width, kernel_size)  # W_H^l
        self.output_head = _conv(in_channels, width * num_classes, kernel_size)  # W_O^l (head-major)
        self.confidence_gate = _conv(in_channels, width, kernel_size)  # W_g^l

    def forward(self, z: torch.Tensor) -> ModuleOutput:
        b, c, h, w = z.shape
        k, m = self.width, self.num_classes
        if self.attention_head.kernel_size == (1, 1):
            return self._forward_1x1(z)
        # The convolutions run in the caller's precision (bf16/fp16 under autocast); the pooling
        # and gating after them in float32, which autocast would otherwise lower again.
        attention_logits, output_maps, gate_maps = self.attention_head(z), self.output_head(z), self.confidence_gate(z)
        with torch.autocast(z.device.type, enabled=False):
            # [1] attention head: a softmax over the h*w pixels of each of the K maps.
            H = F.softmax(attention_logits.flatten(2).float(), dim=2)  # (B, K, hw)
            # [2] output head: each head's M class-score maps, pooled by its own attention map.
            O = output_maps.reshape(b, k, m, h * w).float()
            head_hypotheses = torch.einsum("bkmp,bkp->bkm", O, H)
            # [3] confidence gate: how much to trust each head, from its attention-pooled score.
            s = torch.einsum("bkp,bkp->bk", gate_maps.flatten(2).float(), H)
            confidence_gates = gate_weights(s)
            # [4] the module's hypothesis: heads mixed by their confidence gates.
            hypothesis = torch.einsum("bk,bkm->bm", confidence_gates, head_hypotheses)
        return ModuleOutput(H.reshape(b, k, h, w), head_hypotheses, confidence_gates, hypothesis, s)

    def _forward_1x1(self, z: torch.Tensor) -> ModuleOutput:
        """The same equations for 1x1 heads, computed in the cheaper order.

        A 1x1 convolution without bias is linear per pixel, so pooling commutes with it:
        Σ_xy H_k ⊙ (W_O,k * Z) = W_O,k · (Σ_xy H_k Z). Pooling Z once per head first costs h·w·K·C
        instead of h·w·K·M·C, and avoids small convolutions that CPUs run slowly. All of it runs in
        float32, under autocast too.
        """
        b, c, h, w = z.shape
        k, m = self.width, self.num_classes
        with torch.autocast(z.device.type, enabled=False):
            Z = z.flatten(2).float()  # (B, C, hw)
            W_H = self.attention_head.weight.view(k, c).float()
            W_O = self.output_head.weight.view(k, m, c).float()
            W_g = self.confidence_gate.weight.view(k, c).float()
            H = F.softmax(torch.einsum("kc,bcp->bkp", W_H, Z), dim=2)  # [1]
            pooled = torch.einsum("bkp,bcp->bkc", H, Z)  # Σ_xy H_k Z, one C-vector per head
            head_hypotheses = torch.einsum("bkc,kmc->bkm", pooled, W_O)  # [2]
            s = torch.einsum("bkc,kc->bk", pooled, W_g)
            confidence_gates = gate_weights(s)  # [3]
            hypothesis = torch.einsum("bk,bkm->bm", confidence_gates, head_hypotheses)  # [4]
        return ModuleOutput(H.reshape(b, k, h, w), head_hypotheses, confidence_gates, hypothesis, s)


def gate_weights(pre_tanh: torch.Tensor) -> torch.Tensor:
    """softmax(tanh(x)) over dim 1: the form of both gates, [3] over a layer's K heads and [5] over the
    sources. tanh bounds each logit to ±1, so no unit can take all the weight (at most e² ≈ 7.4 times
    another's)."""
    return F.softmax(torch.tanh(pre_tanh), dim=1)


class GlobalGate(nn.Module):
    """[5] One weight per source (each attention module, then the network's own output)."""

    def __init__(self, in_channels: int, num_sources: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, num_sources, bias=False)  # W_G
        nn.init.kaiming_normal_(self.linear.weight)
        self.bn = nn.BatchNorm1d(num_sources)

    def forward(self, last_features: torch.Tensor) -> GlobalGateOutput:
        # float32 under autocast too, as the modules' gates: it costs one C x (N+1) product per image,
        # and bf16 would round tanh's argument (|x| ~ 3 here) to about 0.01.
        with torch.autocast(last_features.device.type, enabled=False):
            pooled = last_features.float().mean(dim=(2, 3))  # GAP(Z^L)
            pre_tanh = self.bn(self.linear(pooled))
            return GlobalGateOutput(gate_weights(pre_tanh), pre_tanh)


def fusion_contributions(global_gates: torch.Tensor, source_scores: torch.Tensor) -> torch.Tensor:
    """[6] The terms g_O^s · log_softmax(o^s) of the fusion, shape (B, S, M).

    ``source_scores`` is (B, S, M): every module's hypothesis and, last, the network's output.
    Their sum over S is the fused output; each term is what one source adds to each class.
    """
    return global_gates.unsqueeze(2) * F.log_softmax(source_scores.float(), dim=2)


def fuse(global_gates: torch.Tensor, source_scores: torch.Tensor) -> torch.Tensor:
    """[6] The fused output: Σ_s g_O^s · log_softmax(o^s), shape (B, M)."""
    return fusion_contributions(global_gates, source_scores).sum(dim=1)


def inter_head_regularizer(attention_maps: torch.Tensor) -> torch.Tensor:
    """[8] R^l: penalises heads of one module that attend the same places.

    P is H^l average-pooled 2x2 (skipped on maps too small to pool), flattened to (B, K, hw/4);
    the off-diagonal entries of P Pᵀ are the overlaps between heads.
    """
    if min(attention_maps.shape[-2:]) >= 2:
        attention_maps = F.avg_pool2d(attention_maps, 2, 2)
    P = attention_maps.flatten(2)
    k = P.shape[1]
    off_diagonal = 1.0 - torch.eye(k, device=P.device, dtype=P.dtype)
    return ((P @ P.transpose(1, 2)) * off_diagonal).pow(2).mean()
