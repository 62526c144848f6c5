"""The "Over training" view: how a checkpoint's attention maps, gates and answers formed, epoch by epoch.

Lays out what ``ar_core.history`` recorded while the model trained (figures from
``app.figures_training``); shared by the inspector and the data-set page.
"""

from __future__ import annotations

import streamlit as st

from app import figures_training as ft
from app import state
from ar_core.history import traced_other_weights
from ar_core.inference import to_hwc


def render(source: str, key: str, dataset=None, dataset_key: str | None = None) -> None:
    """The view for the checkpoint at ``source``; ``dataset`` (the sidebar's, named by ``dataset_key``)
    supplies the probe images when it is the folder the checkpoint was trained on."""
    history, problem = state.training_history(source)
    if history is None:
        st.info(problem)
        return
    images = state.probe_images(history, dataset, dataset_key) if dataset is not None else None
    st.write(f"While this model trained, its trainer traced the same {len(history.probe_index)} validation images "
             f"after every epoch ({len(history.epochs)} epochs). Move through the epochs to watch the attention "
             f"maps, the gates and the answers form.")
    note = traced_other_weights(history, state.checkpoint_meta(source) or {})
    if note:
        st.caption(note)
    if images is None:
        st.caption("The probe images themselves are not stored with the model. Choose the training folder it was "
                   "trained on as the sidebar's ImageFolder directory to see them beneath the maps.")
    _explorer(history, images, key)
    c1, c2 = st.columns(2)
    c1.plotly_chart(ft.accuracy_curves(history), key=f"{key}_acc")
    c2.plotly_chart(ft.global_gate_curves(history), key=f"{key}_gates")
    if history.layers:
        c1.plotly_chart(ft.gate_lean_curves(history), key=f"{key}_lean")
        c2.write("A gate that leans 100 % has two of its units at opposite ends of tanh: their weights are "
                 "e² ≈ 7.4 apart, the most softmax(tanh) allows, and the image can no longer move them. A gate "
                 "that decides per image stays below and moves from one image to the next.")


@st.fragment
def _explorer(history, images, key: str) -> None:
    """Probe and epoch pickers: moving them reruns this fragment only."""
    c1, c2 = st.columns([1, 2])
    labels = [history.classes[c] for c in history.probe_labels]
    probe = c1.selectbox("Probe image", range(len(labels)), key=f"{key}_probe",
                         format_func=lambda j: f"probe {j + 1} · {labels[j]}")
    epoch = c2.select_slider("Epoch", history.epochs, value=history.epochs[-1], key=f"{key}_epoch")
    if not history.layers:
        st.info("This is a baseline (AD = 0): it has no attention maps or gates; its answers and accuracy are "
                "shown per epoch below.")
    else:
        image = to_hwc(images[probe]) if images is not None else None
        summary = ft.probe_summary(history, probe, epoch)
        st.markdown(f"**Epoch {epoch}**: fused answer **{summary['fused']}** (true class: {summary['true']})")
        for layer, row in zip(summary["layers"], ft.probe_panels(history, probe, epoch, image)):
            st.markdown(f"**{layer['name']}** · global gate g_O {layer['global_gate']:.2f} · believes "
                        f"**{layer['belief']}**")
            for j, (col, panel) in enumerate(zip(st.columns(len(row)), row)):
                col.image(panel, caption=f"head {j + 1} · g {layer['head_gates'][j]:.2f}", width="stretch")
    c3, c4 = st.columns(2)
    c3.plotly_chart(ft.probe_belief_curves(history, probe, epoch), key=f"{key}_belief")
    if history.layers:
        c4.plotly_chart(ft.global_gate_curves(history, epoch, probe), key=f"{key}_probe_gates")
