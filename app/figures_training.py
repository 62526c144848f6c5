"""Figure builders for a checkpoint's training history (attention over training). No Streamlit.

Pure functions from an ``ar_core.history.History`` (and optionally the probe image) to plotly or
matplotlib figures, so tests call them directly.
"""

from __future__ import annotations

import numpy as np

from ar_core.gates import lean, weight_bounds
from ar_core.history import History

from .figures import SOURCE_COLORS, blend, display_base, upsample


def _output_label(name: str) -> str:
    return {"network": "network alone", "fused": "fused output"}.get(name, f"attention @ {name} alone")


def _color(history: History, name: str) -> str:
    return "#222222" if name == "fused" else SOURCE_COLORS[history.sources.index(name) % len(SOURCE_COLORS)]


def accuracy_curves(history: History, epoch: int | None = None):
    """Validation accuracy of every source alone and of the fused output, per epoch."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for j, name in enumerate(history.outputs):
        fig.add_scatter(x=history.epochs, y=100 * history.val_accuracy[:, j].numpy(), mode="lines+markers",
                        name=_output_label(name), line={"color": _color(history, name),
                                                        "width": 3 if name == "fused" else 1.5})
    _mark_epoch(fig, epoch)
    fig.update_layout(title="Validation accuracy of each source", xaxis_title="epoch",
                      yaxis_title="accuracy (%)", height=340, margin={"t": 40, "b": 40}, legend={"orientation": "h"})
    return fig


def global_gate_curves(history: History, epoch: int | None = None, probe: int | None = None):
    """Mean global gate g_O^s of every source over the validation split per epoch (solid), and, for a
    probe image, that image's own gates (dotted)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for j, name in enumerate(history.sources):
        color = _color(history, name)
        fig.add_scatter(x=history.epochs, y=history.mean_global_gates[:, j].numpy(), mode="lines",
                        name=f"{name} (mean)", line={"color": color})
        if probe is not None:
            fig.add_scatter(x=history.epochs, y=history.global_gates[:, probe, j].numpy(), mode="lines+markers",
                            name=f"{name} (this image)", line={"color": color, "dash": "dot"})
    if len(history.sources) > 1:  # the weights softmax(tanh) cannot reach, whatever the image
        low, high = weight_bounds(len(history.sources))
        for y0, y1 in ((0, low), (high, 1)):
            fig.add_hrect(y0=y0, y1=y1, fillcolor="#bbb", opacity=0.3, line_width=0, layer="below")
        fig.add_annotation(x=1, xref="paper", y=high, yanchor="bottom", xanchor="right", showarrow=False,
                           text=f"grey: beyond softmax(tanh)'s reach ({low:.3f} … {high:.3f})", font={"size": 10})
    _mark_epoch(fig, epoch)
    fig.update_layout(title="Global gates g_O per epoch",
                      xaxis_title="epoch", yaxis_title="g_O", yaxis_range=[0, 1], height=340,
                      margin={"t": 40, "b": 40}, legend={"orientation": "h"})
    return fig


def gate_lean_curves(history: History, epoch: int | None = None):
    """How far each gate leans per epoch, as a share of the most softmax(tanh) allows (100 %: two of its
    units at opposite ends of tanh), mean over the probe images: the global gate, then each attended
    layer's confidence gate over its heads."""
    import plotly.graph_objects as go

    gates = {"global gate": history.global_gates,
             **{f"{name} confidence gate": g for name, g in history.confidence_gates.items()}}
    fig = go.Figure()
    for name, weights in gates.items():  # weights: (epochs, probes, units)
        layer = name.split()[0]
        fig.add_scatter(x=history.epochs, y=(100 * lean(weights)).mean(1).numpy(), mode="lines+markers", name=name,
                        line={"color": "#222" if layer == "global" else _color(history, layer),
                              "width": 3 if layer == "global" else 1.5})
    _mark_epoch(fig, epoch)
    fig.update_layout(title="How far each gate leans (100 %: at softmax(tanh)'s bound)", xaxis_title="epoch",
                      yaxis_title="% of the most it can (mean over probes)", yaxis_range=[0, 105], height=340,
                      margin={"t": 40, "b": 40}, legend={"orientation": "h"})
    return fig


def probe_belief_curves(history: History, probe: int, epoch: int | None = None):
    """The probability each source gave the probe image's true class, per epoch."""
    import plotly.graph_objects as go

    true = history.classes[history.probe_labels[probe]]
    fig = go.Figure()
    for j, name in enumerate(history.outputs):
        fig.add_scatter(x=history.epochs, y=history.true_class_prob[:, probe, j].numpy(), mode="lines+markers",
                        name=_output_label(name), line={"color": _color(history, name),
                                                        "width": 3 if name == "fused" else 1.5})
    _mark_epoch(fig, epoch)
    fig.update_layout(title=f"This image: p(true class = {true})", xaxis_title="epoch",
                      yaxis_title="p(true class)", yaxis_range=[0, 1], height=340, margin={"t": 40, "b": 40},
                      legend={"orientation": "h"})
    return fig


def _mark_epoch(fig, epoch: int | None) -> None:
    if epoch is not None:
        fig.add_vline(x=epoch, line={"color": "#888", "dash": "dash"})


def probe_summary(history: History, probe: int, epoch: int) -> dict:
    """What the page writes around a probe image's maps at one epoch: the fused and true answers, and per
    attended layer its global gate, its belief and each head's confidence gate."""
    e = history.epochs.index(epoch)
    layers = []
    for layer in history.layers:
        s = history.sources.index(layer)
        layers.append({"name": layer, "global_gate": float(history.global_gates[e, probe, s]),
                       "belief": history.classes[int(history.predictions[e, probe, s])],
                       "head_gates": history.confidence_gates[layer][e, probe].float().tolist()})
    return {"epoch": epoch, "fused": history.classes[int(history.predictions[e, probe, -1])],
            "true": history.classes[history.probe_labels[probe]], "layers": layers}


def probe_panels(history: History, probe: int, epoch: int, image: np.ndarray | None = None, alpha: float = 0.55,
                 cmap: str = "jet", display_size: int = 96) -> list[list[np.ndarray]]:
    """RGB uint8 panels [layer][head]: the probe's attention maps at one epoch, colour-mapped and blended over
    the probe image (``image`` (H, W, 3) uint8), or alone without it. No figure is rendered, so moving the
    epoch slider redraws in milliseconds."""
    e = history.epochs.index(epoch)
    base = display_base(image, display_size)
    weight = alpha if image is not None else 1.0
    return [list(blend(base, upsample(history.attention_maps[layer][e, probe], display_size), weight, cmap))
            for layer in history.layers]
