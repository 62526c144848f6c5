"""Figure builders for gate behaviour, sanity checks and the head atlas. Pure functions, no Streamlit."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from app.figures import SOURCE_COLORS
from ar_core.attribution import unit_range


def _saturation_bands(fig, threshold: float, lo: float, hi: float, **where):
    for a, b in ((lo, -threshold), (threshold, hi)):
        fig.add_vrect(x0=a, x1=b, fillcolor="lightgrey", opacity=0.35, line_width=0, layer="below", **where)


def gate_distribution_figure(stats: dict[str, Any], gate: str):
    """One gate's pre-tanh histograms over a data set, one line per unit; grey where tanh is saturated."""
    import plotly.graph_objects as go

    s = stats["gates"][gate]
    edges = np.asarray(stats["bin_edges"])
    centers = (edges[1:] + edges[:-1]) / 2
    t = stats["saturation_threshold"]
    fig = go.Figure()
    _saturation_bands(fig, t, float(edges[0]), float(edges[-1]))
    for u, unit in enumerate(s["units"]):
        fig.add_trace(go.Scatter(x=centers, y=s["counts"][u], mode="lines", line_shape="hvh",
                                 line=dict(color=SOURCE_COLORS[u % len(SOURCE_COLORS)]),
                                 name=f"{unit}: {s['saturated_fraction'][u]:.0%} saturated",
                                 hovertemplate=f"{unit}<br>x≈%{{x:.2f}}: %{{y}} images<extra></extra>"))
    fig.update_layout(title=f"{gate} gate: what tanh receives, over {stats['n']} images (grey: |x| > {t:g})",
                      xaxis_title=f"pre-tanh value (beyond ±{edges[-1]:g} counted in the end bins)",
                      yaxis_title="images", height=340, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def tanh_figure(rows: Sequence[dict[str, Any]], threshold: float, title: str = ""):
    """Each unit's pre-tanh value as a point on the tanh curve; the flat grey ends are saturation.

    Two traces and layout shapes only: it is drawn on every inspector run, so it stays cheap.
    """
    import plotly.graph_objects as go

    lim = max(6.0, *(abs(r["pre-tanh"]) + 0.5 for r in rows)) if rows else 6.0
    x = np.linspace(-lim, lim, 121)
    band = dict(type="rect", yref="paper", y0=0, y1=1, fillcolor="lightgrey", opacity=0.35, line_width=0,
                layer="below")
    points = go.Scatter(
        x=[r["pre-tanh"] for r in rows], y=[r["tanh"] for r in rows], mode="markers+text",
        text=[r["unit"] for r in rows], textposition="top center",
        customdata=[r["weight"] for r in rows],
        marker=dict(size=11, color=[SOURCE_COLORS[j % len(SOURCE_COLORS)] for j in range(len(rows))],
                    symbol=["x" if r["saturated"] else "circle" for r in rows]),
        hovertemplate="%{text}: x=%{x:.2f}, tanh=%{y:.3f}, weight %{customdata:.3f}<extra></extra>")
    return go.Figure([go.Scatter(x=x, y=np.tanh(x), mode="lines", line=dict(color="grey"), hoverinfo="skip"),
                      points],
                     layout=dict(title=title, xaxis_title="pre-tanh value x", yaxis=dict(title="tanh(x)",
                                                                                        range=[-1.25, 1.25]),
                                 shapes=[{**band, "x0": -lim, "x1": -threshold}, {**band, "x0": threshold, "x1": lim}],
                                 height=300, showlegend=False, margin=dict(l=10, r=10, t=40, b=10)))


def sanity_strip_figure(image: np.ndarray, stages: Sequence[str], maps: dict[str, list[np.ndarray]],
                        cmap: str = "jet"):
    """Rows: maps (attention, each attribution); columns: the trained model, then each randomisation
    step. Every map is rescaled to [0, 1] on its own, over the input image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    cols = len(stages)
    fig = Figure(figsize=(1.7 * cols + 1.6, 1.8 * len(maps) + 0.4), layout="constrained")
    axes = fig.subplots(len(maps), cols + 1, squeeze=False)
    for r, (method, per_stage) in enumerate(maps.items()):
        axes[r][0].imshow(image)
        axes[r][0].set_ylabel(method.replace("_", " "), fontsize=8)
        for c, m in enumerate(per_stage, start=1):
            axes[r][c].imshow(image)
            axes[r][c].imshow(unit_range(m), cmap=cmap, alpha=0.6,
                              vmin=0, vmax=1, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    for c, title in enumerate(["input", *stages]):
        axes[0][c].set_title(title if c < 2 else f"+ {title}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def sanity_curve_figure(stages: Sequence[str], scores: dict[str, dict[str, list[float]]]):
    """Similarity of each map to the trained model's, after each cumulative randomisation step."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["Spearman rank correlation", "SSIM"])
    for j, (method, s) in enumerate(scores.items()):
        color = SOURCE_COLORS[j % len(SOURCE_COLORS)]
        for col, metric in ((1, "spearman"), (2, "ssim")):
            ys = [None if v != v else v for v in s[metric]]  # NaN (a constant map) leaves a gap
            fig.add_trace(go.Scatter(x=list(stages), y=ys, mode="lines+markers", name=method, legendgroup=method,
                                     line=dict(color=color), showlegend=col == 1,
                                     hovertemplate=f"{method}, %{{x}}: %{{y:.3f}}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(range=[-0.4, 1.05])
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def map_overlays(images: np.ndarray, maps, alpha: float = 0.55, cmap: str = "jet", size: int = 96) -> list[np.ndarray]:
    """RGB uint8 panels: each (h, w) map, bilinear-upsampled and rescaled, blended over its (H, W, 3) image."""
    from app.figures import blend, display_base, upsample

    base = np.stack([display_base(im, size) for im in images])
    return list(blend(base, upsample(maps, size), alpha, cmap))


def mean_maps_figure(means: dict, layer: str):
    """One attended layer's mean attention map per head (plotly heatmaps on a shared scale)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    m = np.asarray(means[layer], dtype=float)
    fig = make_subplots(rows=1, cols=len(m), subplot_titles=[f"head {k + 1}" for k in range(len(m))],
                        horizontal_spacing=0.03)
    for k, mk in enumerate(m, start=1):
        fig.add_trace(go.Heatmap(z=mk, coloraxis="coloraxis", hovertemplate="x=%{x}, y=%{y}: %{z:.4f}<extra></extra>"),
                      row=1, col=k)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k if k > 1 else ''}", showticklabels=False, row=1, col=k)
        fig.update_xaxes(showticklabels=False, row=1, col=k)
    fig.update_layout(coloraxis=dict(colorscale="Jet", colorbar=dict(title="mean H")), height=260,
                      title=f"{layer}: mean attention map of each head", margin=dict(l=10, r=10, t=60, b=10))
    return fig
