"""Start page: choose or upload an image and follow it through the gated attention, view by view."""

from __future__ import annotations

import hashlib
import time

import streamlit as st
import torch

from app import figures, state
from app.pages.about import EQUATIONS
from ar_core.checkpoint import CheckpointError
from ar_core.inference import (ImageError, ablate, fit_image, load_image, rectification, to_uint8, topk,
                               trace_to_json, trace_to_npz)

CMAPS = ["jet", "viridis", "inferno", "magma", "gray"]


def _sidebar_model():
    """Model and device choice; returns (label, path, device) or None without any checkpoint."""
    with st.sidebar:
        st.header("Model")
        with st.expander("Use your own checkpoint"):
            up = st.file_uploader("safetensors checkpoint", type=["safetensors"], key="ckpt_upload",
                                  help="Saved by ar_core.save_checkpoint, or converted from the reference "
                                       "implementation with `python -m ar_core.convert`.")
            if up is not None and st.session_state.get("ckpt_seen") != up.file_id:
                st.session_state["ckpt_seen"] = up.file_id
                try:
                    state.save_uploaded_checkpoint(up.getvalue(), up.name)
                    st.success(f"Loaded {up.name}")
                except CheckpointError as e:
                    st.session_state["ckpt_error"] = str(e)
            if st.session_state.get("ckpt_error"):
                st.error(st.session_state["ckpt_error"])
        choices = state.model_choices()
        if not choices:
            st.warning("No checkpoint found. Train one with `python -m ar_core.train` (see README) or upload one.")
            return None
        label = st.selectbox("Checkpoint", list(choices), key="model_label")
        device = st.selectbox("Device", state.device_options(), key="device",
                              help="auto picks CUDA, then Apple MPS, then the CPU")
        return label, choices[label], device


def _model_card(meta: dict):
    cfg = meta.get("config", {})
    acc = meta.get("val_accuracy")
    st.caption(
        f"{meta.get('dataset', '?')} · WRN-{cfg.get('depth')}-{cfg.get('width')} · AD={cfg.get('attention_depth')} "
        f"AW={cfg.get('attention_width')} · {cfg.get('kernel_size')}x{cfg.get('kernel_size')} heads"
        + (f" · validation accuracy {acc:.2%}" if acc is not None else ""))


def _inputs(size: int):
    """Uploaded / camera images as [(name, digest, PIL original)], plus the fit mode."""
    tab_up, tab_cam = st.tabs(["Upload", "Camera"])
    with tab_up:
        files = st.file_uploader("Images (PNG, JPEG, WebP, BMP, GIF, TIFF)", accept_multiple_files=True,
                                 key="images")
    with tab_cam:
        shot = st.camera_input("Take a picture", key="camera")
    fit = st.radio("Fit to the model's input", ["center-crop", "pad"], horizontal=True, key="fit",
                   help=f"The model sees {size}x{size} pixels: crop the centre square, or pad to a square.")
    raw = [(f.name, f.getvalue()) for f in (files or [])]
    if shot is not None:
        raw.append(("camera", shot.getvalue()))
    good, errors = [], []
    for name, data in raw:
        try:
            good.append((name, hashlib.sha256(data).hexdigest()[:16], load_image(data, name)))
        except ImageError as e:
            errors.append(str(e))
    for e in errors:
        st.error(e)
    return good, fit


def render():
    st.title("Attend & Rectify Explorer")
    st.write("Pick an image and see where each attention head looked, how much each gate trusted it, and how "
             "the final answer was fused — and possibly rectified.")
    chosen = _sidebar_model()
    if chosen is None:
        return
    label, path, device = chosen
    try:
        model, meta = state.get_model(path, device)
    except (CheckpointError, OSError, RuntimeError) as e:
        st.error(f"Cannot load {label}: {e}")
        return
    _model_card(meta)
    size = int(meta.get("image_size", 32))
    images, fit = _inputs(size)
    if images:
        names = [f"{n} ({d[:6]})" for n, d, _ in images]
        pick = st.selectbox("Image", range(len(images)), format_func=lambda j: names[j], key="pick") \
            if len(images) > 1 else 0
        name, digest, original = images[pick]
        fitted = fit_image(original, size, fit)
        x = to_uint8(fitted).unsqueeze(0)
        t0 = time.perf_counter()
        result = state.cached_inspection(model, meta, (digest, fit, path, device), x)
        st.session_state["result"] = {"name": name, "image": x[0].permute(1, 2, 0).numpy(), "ins": result,
                                      "label": None, "wall_ms": (time.perf_counter() - t0) * 1000}
    res = st.session_state.get("result")
    if res is None:
        st.info("Upload an image (or take a picture) to begin.")
        return
    _views(res)


def _views(res):
    ins = res["ins"]
    trace, classes = ins.trace, ins.classes
    t_start = time.perf_counter()
    c1, c2 = st.columns([1, 4])
    with c1:
        st.image(res["image"], caption=f"{res['name']}: model input", width=160)
    with c2:
        pred = topk(trace.output[0], classes, 1)[0]
        net = topk(trace.net_output[0], classes, 1)[0]
        verdict = rectification(trace, 0, res.get("label"))
        st.metric("Prediction (fused)", f"{pred[0]}", f"{pred[1]:.1%}", delta_color="off")
        if verdict in ("changed", "rectified"):
            st.success(f"Attention changed the answer: the network alone says **{net[0]}** ({net[1]:.1%}); "
                       f"the fused output says **{pred[0]}**." + (" The fused answer is right: rectified."
                                                                  if verdict == "rectified" else ""))
        elif verdict == "spoiled":
            st.error(f"Attention spoiled the answer: the network alone was right ({net[0]}).")
        else:
            st.caption(f"The network alone agrees: {net[0]} ({net[1]:.1%}).")
        st.caption(f"Device {ins.device} · model run {ins.latency_ms:.0f} ms")

    tabs = st.tabs(["1 · Prediction", "2 · Attention maps", "3 · Confidence gates", "4 · Global fusion", "Export"])
    with tabs[0]:
        st.write("Top-5 classes of the fused output, of the network's own output, and of each attended layer's "
                 "hypothesis. Probabilities are the softmax of each source's scores.")
        st.latex(EQUATIONS[5][1])
        st.plotly_chart(figures.prediction_figure(trace, 0, classes), key="pred_fig")
    if not trace.layers:
        for tab in tabs[1:4]:
            with tab:
                st.info("This is a baseline (AD = 0): it has no attention modules or gates to show.")
    else:
        with tabs[1]:
            _attention_view(trace, classes, res["image"])
        with tabs[2]:
            st.write("Each module weighs its K heads by a confidence gate computed from what the head attended. "
                     "A head with a high gate dominates its layer's hypothesis.")
            st.latex(EQUATIONS[2][1])
            st.plotly_chart(figures.confidence_gates_figure(trace, 0, classes), key="conf_fig")
        with tabs[3]:
            _fusion_view(trace, classes)
    with tabs[4]:
        base = res["name"].rsplit(".", 1)[0]
        st.download_button("Trace as JSON", trace_to_json(trace, classes, 0), f"{base}-trace.json",
                           mime="application/json", key="dl_json")
        st.download_button("Trace as NPZ", trace_to_npz(trace, 0), f"{base}-trace.npz",
                           mime="application/octet-stream", key="dl_npz")
        if trace.layers:
            fig = figures.attention_grid(res["image"], trace, 0, classes)
            st.download_button("Attention maps as PNG", figures.figure_to_png(fig), f"{base}-attention.png",
                               mime="image/png", key="dl_png")
    st.caption(f"Views laid out in {(time.perf_counter() - t_start) * 1000 + res.get('wall_ms', 0):.0f} ms "
               f"(model run included).")


@st.fragment
def _attention_view(trace, classes, image):
    st.write("Each row is an attended layer, each column one of its K heads. Bright regions are where the head "
             "looked; the caption gives the head's top class and its confidence gate g.")
    st.latex(EQUATIONS[0][1])
    c1, c2 = st.columns(2)
    alpha = c1.slider("Overlay opacity", 0.0, 1.0, 0.55, 0.05, key="alpha")
    cmap = c2.selectbox("Colormap", CMAPS, key="cmap")
    st.pyplot(figures.attention_grid(image, trace, 0, classes, alpha, cmap), clear_figure=False)
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Layer", range(len(trace.layers)), format_func=lambda j: trace.layers[j].name, key="hm_layer")
    head = c2.selectbox("Head", range(trace.layers[0].attention_maps.shape[1]), format_func=lambda k: f"head {k + 1}",
                        key="hm_head")
    st.plotly_chart(figures.attention_heatmap(trace, 0, layer, head, classes), key="heatmap")


@st.fragment
def _fusion_view(trace, classes):
    st.write("The global gates weigh every attended layer and the network's own output; the fused score of a "
             "class is the sum of each source's gate times its log-probability.")
    st.latex(EQUATIONS[4][1])
    st.plotly_chart(figures.global_gates_figure(trace, 0), key="gg_fig")
    pred = int(trace.output[0].argmax())
    extra = st.multiselect("Classes to decompose", range(len(classes)), default=[pred],
                           format_func=lambda c: classes[c], key="contrib_classes")
    st.plotly_chart(figures.contributions_figure(trace, 0, classes, extra or [pred]), key="contrib_fig")
    st.subheader("Ablation")
    st.write("Switch sources or heads off: the remaining gates are renormalised and the fusion recomputed.")
    cols = st.columns(len(trace.sources))
    sources_on = [cols[j].checkbox(s, True, key=f"src_{s}") for j, s in enumerate(trace.sources)]
    heads_on = []
    for layer in trace.layers:
        k = layer.attention_maps.shape[1]
        hc = st.columns(k + 1)
        hc[0].caption(layer.name)
        heads_on.append([hc[j + 1].checkbox(f"head {j + 1}", True, key=f"head_{layer.name}_{j}") for j in range(k)])
    try:
        out = ablate(trace, sources_on, heads_on)
    except ValueError as e:
        st.warning(str(e))
        return
    new = topk(out[0], classes, 3)
    old = topk(trace.output[0], classes, 1)[0]
    moved = "unchanged" if new[0][2] == old[2] else f"changed from {old[0]}"
    st.write(f"Ablated prediction: **{new[0][0]}** ({new[0][1]:.1%}), {moved}. Runner-up: "
             + ", ".join(f"{n} ({p:.1%})" for n, p, _ in new[1:]))
