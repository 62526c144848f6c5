"""The guided walk through one prediction, and the maps on the original photo (layout only)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import figures, state

POS_KEY = "walk_pos"  # (image's result key, step) so a new image starts the walk from the beginning


def _move(image: tuple, step: int, n: int):
    _, pos = st.session_state.get(POS_KEY, (image, 0))
    st.session_state[POS_KEY] = (image, int(np.clip(pos + step, 0, n - 1)))


def _start(image: tuple):
    st.session_state[POS_KEY] = (image, 0)


@st.fragment
def guided_walk(res: dict, trace, classes: list[str]):
    """Step by step, each step's text next to its figure; Previous/Next rerun this fragment only."""
    from ar_core.walk import walk

    image = state.result_key(res)
    current = st.session_state.get(POS_KEY)
    if current is None or current[0] != image:
        st.write("A step-by-step story of this prediction, told with this image's own numbers: what the network "
                 "thought, where each attention head looked and what it believed, whom the gates trusted, and how "
                 "the final answer came about. No need to have read the paper.")
        st.button("Walk me through this prediction", key="walk_start", on_click=_start, args=(image,), type="primary")
        return
    steps = walk(trace, classes, res.get("label"))
    n = len(steps)
    pos = min(current[1], n - 1)
    c1, c2, c3 = st.columns([1, 4, 1])
    c1.button("← Previous", key="walk_prev", disabled=pos == 0, on_click=_move, args=(image, -1, n))
    c2.progress((pos + 1) / n, text=f"Step {pos + 1} of {n}")
    c3.button("Next →", key="walk_next", disabled=pos == n - 1, on_click=_move, args=(image, 1, n))
    step = steps[pos]
    left, right = st.columns([3, 2])
    with left:
        st.subheader(step.title)
        st.markdown(step.text)
    with right:
        if step.figure == "prediction":
            st.plotly_chart(figures.prediction_figure(trace, 0, classes, k=3), key="walk_fig_pred")
        elif step.figure == "layer":
            l = step.args["layer"]
            panels = figures.overlay_panels(res["image"], trace, 0)[l]
            st.image(panels, width=110, caption=[f"head {k + 1}" for k in range(len(panels))])
        elif step.figure == "global_gates":
            st.plotly_chart(figures.global_gates_figure(trace, 0), key="walk_fig_gates")
        else:
            st.plotly_chart(figures.contributions_figure(trace, 0, classes, step.args["classes"]), key="walk_fig_fuse")


def original_photo(res: dict, trace):
    """For uploads and camera shots, when asked: the photo region the model saw (up to 512 pixels), else None;
    :func:`on_original` draws on it."""
    photo = res.get("photo")
    if photo is None or not trace.layers:
        return None
    if photo.shape[0] <= len(res["image"]):  # the grid above shows all of it already, pixel for pixel or more
        return None
    if not st.toggle("Show the maps on the original photo", key="on_photo",
                     help="The same maps, upsampled bilinearly onto the part of your photo the model saw "
                          f"(up to 512 pixels), instead of onto the {len(res['image'])}x{len(res['image'])} "
                          "model input."):
        return None
    return photo


def on_original(view: np.ndarray, model_size: int, trace, alpha: float, cmap: str):
    """Every head's map over the photo region ``view``, at its resolution, with the grid's opacity and colormap."""
    size = min(view.shape[0], 512)
    panels = figures.overlay_panels(view, trace, 0, alpha, cmap, display_size=size)
    st.caption(f"On the photo ({view.shape[1]}x{view.shape[0]} pixels shown; the model saw it as "
               f"{model_size}x{model_size}).")
    for layer, row in zip(trace.layers, panels):
        cols = st.columns(len(row))
        for k, (col, panel) in enumerate(zip(cols, row)):
            col.image(panel, caption=f"{layer.name} · head {k + 1}", width="stretch")
