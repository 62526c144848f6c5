"""Small layout pieces shared by pages (no computation beyond arranging figures)."""

from __future__ import annotations

import streamlit as st

from app import figures


def show_figure(fig, dpi: int = 110, width="stretch") -> None:
    """A matplotlib figure as a PNG at ``dpi`` (st.pyplot no longer takes savefig options; its 200 dpi
    default makes three times the pixels these panels need)."""
    st.image(figures.figure_to_png(fig, dpi / 72, tight=True), width=width)


def attention_panels(trace, classes, image, alpha: float = 0.55, cmap: str = "jet", i: int = 0,
                     captions: bool = True):
    """One row per attended layer, one overlay per head, captioned with its top class and gate."""
    panels = figures.overlay_panels(image, trace, i, alpha, cmap)
    k = len(panels[0])
    for layer, row in zip(trace.layers, panels):
        h, w = layer.attention_maps.shape[-2:]
        st.markdown(f"**{layer.name}** · {h}x{w}")  # above its row: a narrow column would wrap the name
        cols = st.columns(k)
        for j, (col, panel) in enumerate(zip(cols, row)):
            top = classes[int(layer.head_hypotheses[i, j].argmax())]
            gate = float(layer.confidence_gates[i, j])
            col.image(panel, caption=f"head {j + 1}: {top} · g={gate:.2f}" if captions else f"g={gate:.2f}",
                      width="stretch")
