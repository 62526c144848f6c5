"""Figure builders for a checkpoint's training history (attention over training). No Streamlit.

Pure functions from an ``ar_core.history.History`` (and optionally the probe image) to plotly or
matplotlib figures, so tests call them directly.
"""

from __future__ import annotations

import numpy as np

from ar_core.gates import lean, weight_bounds
from ar_core.history import History

from .figures import SOURCE_COLORS, upsample


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


def probe_maps_figure(history: History, probe: int, epoch: int, image: np.ndarray | None = None,
                      alpha: float = 0.55, cmap: str = "jet", panel_inches: float = 1.6):
    """The probe image's attention maps at one epoch: attended layers in rows, heads in columns, each
    captioned with the head's confidence gate; the row title gives the layer's global gate and what
    the layer believed. ``image`` (H, W, 3) uint8 lies beneath the maps when given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    e = history.epochs.index(epoch)
    layers = history.layers
    k = history.attention_maps[layers[0]].shape[2]
    fig = Figure(figsize=(panel_inches * k + 0.4, panel_inches * len(layers) + 0.5), layout="constrained")
    axes = fig.subplots(len(layers), k, squeeze=False)
    side = image.shape[0] if image is not None else 64
    for r, layer in enumerate(layers):
        maps = upsample(history.attention_maps[layer][e, probe], side)
        gates = history.confidence_gates[layer][e, probe]
        s = history.sources.index(layer)
        belief = history.classes[int(history.predictions[e, probe, s])]
        axes[r, 0].set_ylabel(f"{layer}\ng_O {history.global_gates[e, probe, s]:.2f}\n→ {belief}", fontsize=8)
        for c in range(k):
            ax = axes[r, c]
            if image is not None:
                ax.imshow(image)
                ax.imshow(maps[c], cmap=cmap, alpha=alpha)
            else:
                ax.imshow(maps[c], cmap=cmap)
            ax.set_title(f"head {c + 1} · g {gates[c]:.2f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fused = history.classes[int(history.predictions[e, probe, -1])]
    fig.suptitle(f"epoch {epoch}: fused answer {fused} (true {history.classes[history.probe_labels[probe]]})",
                 fontsize=9)
    return fig
