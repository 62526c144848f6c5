"""Figure builders: pure functions from a trace to matplotlib / plotly figures. No Streamlit.

Every builder takes plain data (a Trace, an image index, class names, display options) and
returns a new figure, so tests call them directly and the app can cache or export them.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ar_core.attribution import unit_range
from ar_core.inference import probabilities
from ar_core.model import Trace

SOURCE_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2"]


def _source_label(name: str) -> str:
    return "network (own output)" if name == "network" else f"attention @ {name}"


def upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """(..., h, w) maps → (..., size, size) by bilinear interpolation, as numpy."""
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, size, size).numpy()


def blend(images: np.ndarray, maps: np.ndarray, alpha: float, cmap: str) -> np.ndarray:
    """RGB uint8 overlays: each map (rescaled to [0, 1]) colour-mapped and blended over its image, both
    already at the display size; ``images`` (..., H, W, 3) broadcasts against ``maps`` (..., H, W)."""
    import matplotlib

    heat = matplotlib.colormaps[cmap](unit_range(maps))[..., :3] * 255.0
    return ((1 - alpha) * np.asarray(images, dtype=np.float32) + alpha * heat).clip(0, 255).astype(np.uint8)


def attention_grid(image: np.ndarray, trace: Trace, i: int, classes: Sequence[str], alpha: float = 0.6,
                   cmap: str = "jet", display_size: int = 128):
    """AD rows x K columns: every head's attention map over the upsampled input.

    Each panel is captioned with the head's top class and its confidence-gate weight g^l_k.
    ``image`` is the model's input as (H, W, 3) uint8.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = len(trace.layers)
    if rows == 0:
        raise ValueError("this model has no attention modules (AD = 0): there are no attention maps to show")
    cols = trace.layers[0].attention_maps.shape[1]
    big = display_base(image, display_size)
    fig = Figure(figsize=(2.1 * cols + 0.4, 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, layer in enumerate(trace.layers):
        maps = upsample(layer.attention_maps[i], display_size)
        h, w = layer.attention_maps.shape[-2:]
        for k in range(cols):
            ax = axes[r][k]
            ax.imshow(big)
            ax.imshow(unit_range(maps[k]), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            top = int(layer.head_hypotheses[i, k].argmax())
            gate = float(layer.confidence_gates[i, k])
            ax.set_title(f"{classes[top]}\ng={gate:.2f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(f"{layer.name}\n{h}x{w}", fontsize=9)
    return fig


def overlay_panels(image: np.ndarray, trace: Trace, i: int, alpha: float = 0.6, cmap: str = "jet",
                   display_size: int = 96) -> list[list[np.ndarray]]:
    """RGB uint8 panels [layer][head]: each attention map, colour-mapped, blended over the input.

    The fast path for the page (no figure rendering); ``attention_grid`` draws the same panels as
    one matplotlib figure for export.
    """
    base = display_base(image, display_size)
    return [list(blend(base, upsample(layer.attention_maps[i], display_size), alpha, cmap)) for layer in trace.layers]


def display_base(image: np.ndarray | None, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 image maps are blended over: the input resized (bicubic), or black."""
    from PIL import Image

    if image is None:
        return np.zeros((size, size, 3), np.uint8)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def attention_heatmap(trace: Trace, i: int, layer: int, head: int, classes: Sequence[str]):
    """Interactive heatmap of one head's map at its native resolution, hover shows the weights."""
    import plotly.graph_objects as go

    lt = trace.layers[layer]
    m = lt.attention_maps[i, head].numpy()
    top = int(lt.head_hypotheses[i, head].argmax())
    fig = go.Figure(go.Heatmap(z=m, colorscale="Jet", hovertemplate="x=%{x}, y=%{y}<br>H=%{z:.4f}<extra></extra>",
                               colorbar=dict(title="H")))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_xaxes(constrain="domain")
    fig.update_layout(title=f"{lt.name}, head {head + 1}: top class {classes[top]}, "
                            f"gate {float(lt.confidence_gates[i, head]):.3f}",
                      height=420, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def prediction_figure(trace: Trace, i: int, classes: Sequence[str], k: int = 5):
    """Top-k probabilities of the fused output beside the network's own output and each layer."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("fused output", trace.output[i])] + [(_source_label(l.name), l.hypothesis[i]) for l in trace.layers]
    panels.insert(1, (_source_label("network"), trace.net_output[i]))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.08)
    for c, (_, scores) in enumerate(panels, start=1):
        p = probabilities(scores)
        v, idx = p.topk(min(k, len(classes)))
        fig.add_trace(go.Bar(x=v.numpy()[::-1], y=[classes[j] for j in idx.tolist()][::-1], orientation="h",
                             marker_color=SOURCE_COLORS[(c - 1) % len(SOURCE_COLORS)],
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>", showlegend=False), row=1, col=c)
        fig.update_xaxes(range=[0, 1], row=1, col=c)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def confidence_gates_figure(trace: Trace, i: int, classes: Sequence[str]):
    """Per layer, the K confidence-gate weights; each bar is labelled with that head's top class."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(trace.layers)
    fig = make_subplots(rows=1, cols=max(1, n), subplot_titles=[l.name for l in trace.layers])
    for c, layer in enumerate(trace.layers, start=1):
        g = layer.confidence_gates[i].numpy()
        tops = [classes[int(j)] for j in layer.head_hypotheses[i].argmax(1)]
        probs = probabilities(layer.head_hypotheses[i]).max(1).values.numpy()
        fig.add_trace(go.Bar(x=[f"head {k + 1}" for k in range(len(g))], y=g, text=tops, textposition="outside",
                             customdata=np.stack([probs], 1), marker_color=SOURCE_COLORS[(c - 1) % 6],
                             hovertemplate="%{x}: g=%{y:.3f}<br>says %{text} (p=%{customdata[0]:.2f})<extra></extra>",
                             showlegend=False), row=1, col=c)
        fig.update_yaxes(range=[0, 1.15], row=1, col=c)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def global_gates_figure(trace: Trace, i: int):
    """The N+1 global gates g_O: how much each source weighs in the fusion."""
    import plotly.graph_objects as go

    g = trace.global_gates[i].numpy()
    fig = go.Figure(go.Bar(x=[_source_label(s) for s in trace.sources], y=g,
                           marker_color=[SOURCE_COLORS[j % 6] for j in range(len(g))],
                           text=[f"{v:.2f}" for v in g], textposition="outside",
                           hovertemplate="%{x}: g_O=%{y:.3f}<extra></extra>"))
    title = "global gate g_O" if not trace.views else f"g_O, mean over {len(trace.views)} views"
    fig.update_layout(yaxis=dict(range=[0, 1.1], title=title), height=300, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def contributions_label(trace: Trace) -> str:
    """What a fusion bar is: one view's g_O · log p, or under test-time augmentation the mean of the views' terms."""
    if not trace.views:
        return "g_O · log p"
    return "mean over image and mirror of g_O · log p" if len(trace.views) == 2 else \
        f"mean over {len(trace.views)} views of g_O · log p"


def contributions_figure(trace: Trace, i: int, classes: Sequence[str], class_indices: Sequence[int]):
    """Waterfall of the fusion terms g_O^s · log p_s(c) for each chosen class c.

    The bars of one class add up to the fused log-score of that class. A flip-averaged trace holds
    the mean of the two views' terms, which is not the mean gate times the mean log-probability;
    the axis says so.
    """
    import plotly.graph_objects as go

    label = contributions_label(trace)
    fig = go.Figure()
    for c in class_indices:
        terms = trace.contributions[i, :, c].numpy()
        fig.add_trace(go.Waterfall(
            name=classes[c], x=[[classes[c]] * (len(terms) + 1), [_source_label(s) for s in trace.sources] + ["fused"]],
            measure=["relative"] * len(terms) + ["total"], y=list(terms) + [float(terms.sum())],
            hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(yaxis_title=label, height=380, margin=dict(l=10, r=10, t=30, b=10), waterfallgap=0.3)
    return fig


def figure_to_png(fig, scale: float = 2.0, tight: bool = False) -> bytes:
    """PNG bytes of a matplotlib figure at 72 x ``scale`` dpi, cropped to its content when ``tight``
    (plotly figures export through kaleido when installed)."""
    buf = io.BytesIO()
    if hasattr(fig, "savefig"):
        fig.savefig(buf, format="png", dpi=int(72 * scale), bbox_inches="tight" if tight else None)
        return buf.getvalue()
    return fig.to_image(format="png", scale=scale)


def attribution_figure(image: np.ndarray, attention: dict[str, np.ndarray], attributions: dict[str, np.ndarray],
                       cmap: str = "inferno", display_size: int = 128):
    """One row: the input, each layer's gated attention, then each attribution map, all input-sized."""
    from matplotlib.figure import Figure

    panels = [(f"attention @ {k}", v) for k, v in attention.items()] + list(attributions.items())
    fig = Figure(figsize=(2.0 * (len(panels) + 1), 2.3), layout="constrained")
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    big = display_base(image, display_size)
    axes[0].imshow(big)
    axes[0].set_title("input", fontsize=9)
    for ax, (title, m) in zip(axes[1:], panels):
        ax.imshow(unit_range(m), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def bars_figure(values: dict[str, float], title: str, percent: bool = False):
    """A labelled bar per entry (e.g. each source's accuracy, each source's dominance share)."""
    import plotly.graph_objects as go

    scale = 100 if percent else 1
    ys = [scale * v for v in values.values()]
    fig = go.Figure(go.Bar(x=list(values), y=ys, text=[f"{y:.2f}" for y in ys], textposition="outside",
                           marker_color=[SOURCE_COLORS[j % 6] for j in range(len(ys))]))
    lo = min(ys) if ys else 0
    fig.update_layout(title=title, yaxis=dict(title="%" if percent else "", range=[max(0, lo - 10 * scale / 100), max(ys) * 1.08 if ys else 1]),
                      height=320, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def confusion_figure(cm, classes: Sequence[str]):
    """Row-normalised confusion matrix; hover shows counts and the row share."""
    import plotly.graph_objects as go

    cm = np.asarray(cm, dtype=float)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=share, x=list(classes), y=list(classes), customdata=cm, colorscale="Blues",
                               zmin=0, zmax=1, hovertemplate="true %{y}, predicted %{x}<br>%{customdata:.0f} images "
                                                             "(%{z:.1%} of the row)<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="true class")
    fig.update_xaxes(title="predicted class")
    fig.update_layout(height=max(380, 14 * len(classes)), margin=dict(l=10, r=10, t=20, b=10))
    return fig


def reliability_figure(rel: dict, ece: float):
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    import plotly.graph_objects as go

    bins = len(rel["accuracy"])
    centers = (np.arange(bins) + 0.5) / bins
    fig = go.Figure([go.Bar(x=centers, y=rel["accuracy"], width=1 / bins, name="accuracy", customdata=rel["count"],
                            hovertemplate="confidence %{x:.2f}: accuracy %{y:.3f} (%{customdata:.0f} images)"
                                          "<extra></extra>"),
                     go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                line=dict(dash="dash", color="red"))])
    fig.update_layout(title=f"reliability of the fused output (ECE {ece:.2%})", xaxis_title="confidence",
                      yaxis_title="accuracy", height=380, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def class_heatmap(rows, classes: Sequence[str], columns: Sequence[str], title: str):
    """A (class x column) heatmap of per-class means; classes without images are blank."""
    import plotly.graph_objects as go

    z = np.asarray([r if r is not None else [np.nan] * len(columns) for r in rows], dtype=float)
    fig = go.Figure(go.Heatmap(z=z, x=list(columns), y=list(classes), colorscale="Viridis",
                               hovertemplate="%{y}, %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=max(320, 14 * len(classes)), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def faithfulness_figure(curves_by_map: dict):
    """Deletion and insertion curves, one line per map (a ar_core.faithfulness.Curves each)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["deletion (lower is better)", "insertion (higher is better)"])
    for j, (name, c) in enumerate(curves_by_map.items()):
        color = SOURCE_COLORS[j % len(SOURCE_COLORS)]
        for col, ys, area in ((1, c.deletion, c.deletion_area), (2, c.insertion, c.insertion_area)):
            fig.add_trace(go.Scatter(x=c.fractions, y=ys, mode="lines", name=f"{name} ({area:.3f})",
                                     line=dict(color=color, dash="dot" if name == "random" else "solid"),
                                     legendgroup=name, showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title="share of pixels removed / revealed", range=[0, 1])
    fig.update_yaxes(title="class probability", range=[0, 1])
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10))
    return fig
