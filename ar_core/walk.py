"""A guided walk through one prediction, in plain words, built from the image's own numbers.

Each :class:`Step` has a title, a short text for someone who has not read the paper, and which
figure goes next to it (the app draws it). Nothing here runs the model: it reads a trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .gates import SATURATION
from .inference import probabilities, rectification
from .model import Trace

ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")


@dataclass
class Step:
    title: str
    text: str
    figure: str  # "prediction", "layer", "global_gates" or "contributions"
    args: dict[str, Any] = field(default_factory=dict)


def where(attention_map: torch.Tensor) -> str:
    """Where a map (h, w) puts most of its weight, in words: the heaviest ninth, and how focused it is."""
    h, w = attention_map.shape
    m = attention_map.double() / attention_map.double().sum()
    rows = torch.tensor_split(torch.arange(h), 3)
    cols = torch.tensor_split(torch.arange(w), 3)
    mass = torch.tensor([[float(m[r][:, c].sum()) for c in cols] for r in rows])
    r, c = divmod(int(mass.argmax()), 3)
    place = "the centre" if (r, c) == (1, 1) else f"the {ROWS[r]} {COLS[c]}".replace("middle ", "").replace(
        " centre", "")
    top = m.flatten().sort(descending=True).values
    share = float(top[:max(1, round(0.1 * top.numel()))].sum())
    focus = "sharply focused" if share > 0.5 else "spread out" if share < 0.2 else "fairly focused"
    return f"{place} ({focus}: its brightest tenth holds {share:.0%} of its attention)"


def _top(scores: torch.Tensor, classes: Sequence[str]) -> tuple[str, float]:
    p = probabilities(scores)
    j = int(p.argmax())
    return classes[j], float(p[j])


def walk(trace: Trace, classes: Sequence[str], label: int | None = None, i: int = 0) -> list[Step]:
    """The steps for image ``i``: the network alone, each attended layer, the global gate, the fusion."""
    net_class, net_p = _top(trace.net_output[i], classes)
    fused_class, fused_p = _top(trace.output[i], classes)
    steps = [Step(
        "1. The network's own answer",
        f"A convolutional network looks at the image and, on its own, says **{net_class}** ({net_p:.0%}). "
        "Attend and Rectify keeps this answer, but adds small attention modules that look at the network's "
        "intermediate layers and form their own opinions. The chart compares every opinion.",
        "prediction")]
    if not trace.layers:
        steps.append(Step("2. No attention here",
                          "This checkpoint is a baseline without attention modules: its answer is the network's.",
                          "prediction"))
        return steps
    for l, layer in enumerate(trace.layers):
        gates = layer.confidence_gates[i]
        lines = []
        for k in range(gates.shape[0]):
            c, p = _top(layer.head_hypotheses[i, k], classes)
            lines.append(f"- head {k + 1} looked at {where(layer.attention_maps[i, k])} and believes "
                         f"**{c}** ({p:.0%}); trust {float(gates[k]):.2f}")
        best = int(gates.argmax())
        pre = float(layer.gate_pre_tanh[i, best])
        fixed = (f" Its gate is saturated here (input {pre:+.1f}), so this trust is a fixed habit of the model "
                 "rather than a judgement of this image." if abs(pre) > SATURATION else "")
        c, p = _top(layer.hypothesis[i], classes)
        h, w = layer.attention_maps.shape[-2:]
        steps.append(Step(
            f"{l + 2}. Attention on {layer.name} ({h}x{w})",
            f"The attention module on {layer.name} has {gates.shape[0]} heads. Each one picks the places it "
            f"finds interesting (bright on the maps) and guesses the class from what it sees there. A confidence "
            f"gate decides how much to trust each head:\n\n" + "\n".join(lines) +
            f"\n\nThe gate trusts head {best + 1} most.{fixed} Mixed by their trust, the heads of "
            f"{layer.name} say **{c}** ({p:.0%}).",
            "layer", {"layer": l}))
    g = trace.global_gates[i]
    order = torch.argsort(g, descending=True).tolist()
    pinned = [trace.sources[s] for s in range(len(trace.sources)) if abs(float(trace.global_pre_tanh[i, s])) > SATURATION]
    weights = ", ".join(f"{'the network' if trace.sources[s] == 'network' else trace.sources[s]} {float(g[s]):.2f}"
                        for s in order)
    steps.append(Step(
        f"{len(trace.layers) + 2}. Whom the global gate trusted",
        f"A global gate looks at the whole image once more and shares one unit of trust between the attention "
        f"modules and the network: {weights}."
        + (f" For {', '.join(pinned)} this share is saturated here, i.e. the model gives it almost the same weight "
           f"to every image." if pinned else ""),
        "global_gates"))
    verdict = rectification(trace, i, label)
    net_j, fused_j = int(trace.net_output[i].argmax()), int(trace.output[i].argmax())
    story = {
        "agrees": f"Fusion **confirmed** the network's answer: {fused_class} ({fused_p:.0%}).",
        "changed": f"Fusion **changed** the answer from {net_class} to **{fused_class}** ({fused_p:.0%}).",
        "both right": f"Fusion **confirmed** the network's answer, which is right: {fused_class} ({fused_p:.0%}).",
        "both wrong": f"The final answer, **{fused_class}** ({fused_p:.0%}), is wrong, as was the network's "
                      f"({net_class}); the true class is {classes[label] if label is not None else '?'}.",
        "rectified": f"Fusion **rectified** the network: it said {net_class}, which is wrong; the final answer "
                     f"**{fused_class}** ({fused_p:.0%}) is right.",
        "spoiled": f"Fusion **spoiled** the network's right answer ({net_class}): the final answer is "
                   f"**{fused_class}** ({fused_p:.0%}).",
    }[verdict]
    steps.append(Step(
        f"{len(trace.layers) + 3}. The final answer",
        "Each source's opinion is weighed by its share of trust and the weighted opinions are added up; the "
        f"class with the highest total wins. {story} The chart shows what each source added to "
        + (f"{fused_class} and {net_class}." if net_j != fused_j else f"{fused_class}."),
        "contributions", {"classes": [fused_j] if net_j == fused_j else [fused_j, net_j]}))
    return steps
