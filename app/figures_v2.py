"""Figure builders for gate behaviour, sanity checks and the head atlas. Pure functions, no Streamlit."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from app.figures import SOURCE_COLORS


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
