"""Perturbation lab: change the inspected image and watch maps, gates and prediction move."""

from __future__ import annotations

import streamlit as st

from app import figures, samples, state, widgets
from ar_core import perturb as P
from ar_core.inference import from_hwc, image_digest, rectification, to_hwc, topk


def _perturbation() -> P.Perturbation:
    """The sidebar's controls as one perturbation."""
    ss = st.session_state
    return P.Perturbation(
        occlusion=(ss["lab_ox"], ss["lab_oy"], ss["lab_osize"]) if ss.get("lab_occlude") else None,
        shift=(ss.get("lab_dx", 0), ss.get("lab_dy", 0)), clutter_scale=ss.get("lab_scale", 1.0),
        noise=ss.get("lab_noise", 0.0), brightness=ss.get("lab_brightness", 0.0),
        contrast=ss.get("lab_contrast", 1.0), seed=ss.get("lab_seed", 0))


def render():
    st.title("Perturbation lab")
    st.write("Occlude, shift, shrink onto clutter, add noise or change brightness and contrast; after each change "
             "the attention maps, gates and prediction are recomputed, next to the baseline. The paper claims "
             "that gated attention helps most when the object is small among clutter.")
    res = st.session_state.get("result")
    if res is None:
        st.info("First choose an image on the *Inspect an image* page; the lab starts from it.")
        if st.button("Start from a sample image", key="lab_start"):  # no dead end: one click to an image
            samples.start_on_inspector()
        return
    size = res["image"].shape[0]
    patch = max(1, size // 4)
    # (label, low, high, default, step) per control. The values live in the session, kept across pages (see
    # app.main.SHARED_WIDGETS), so the widgets take no default of their own; a value of an image of another
    # size is brought inside this one's range.
    controls = {
        "lab_ox": ("Patch x", 0, size - 1, size // 2 - patch // 2, 1),
        "lab_oy": ("Patch y", 0, size - 1, size // 2 - patch // 2, 1),
        "lab_osize": ("Patch size", 1, size, patch, 1),
        "lab_dx": ("Shift x", -(size // 2), size // 2, 0, 1),
        "lab_dy": ("Shift y", -(size // 2), size // 2, 0, 1),
        "lab_scale": ("Object scale on clutter (1 = no clutter)", 0.3, 1.0, 1.0, 0.05),
        "lab_noise": ("Noise (std, share of 255)", 0.0, 0.5, 0.0, 0.01),
        "lab_brightness": ("Brightness", -0.5, 0.5, 0.0, 0.05),
        "lab_contrast": ("Contrast", 0.2, 2.0, 1.0, 0.05),
    }
    ss = st.session_state
    for key, (_, low, high, default, _) in controls.items():
        ss[key] = min(max(ss.get(key, default), low), high)
    ss.setdefault("lab_occlude", False)
    ss.setdefault("lab_seed", 0)
    with st.sidebar:
        st.header("Perturbation")
        st.checkbox("Occlude a patch", key="lab_occlude")
        for key, (label, low, high, _, step) in controls.items():
            st.slider(label, low, high, step=step, key=key)
        st.number_input("Random seed (clutter, noise)", 0, 10_000, key="lab_seed")
    # clutter: patches of the data set chosen in the sidebar when one is loaded, else the image's own tiles
    x = P.apply(from_hwc(res["image"])[0], _perturbation(), st.session_state.get("lab_clutter_images"))
    digest = image_digest(x)
    ins = res["ins"]
    classes = ins.classes
    model, meta = state.get_model(res["path"], res["device"])
    now = state.cached_inspection(model, meta, (f"lab-{digest}", "lab", res["path"], res["device"]), x[None])
    image = to_hwc(x)
    c1, c2, c3 = st.columns([1, 2, 2])
    c1.image(image, caption="perturbed input", width=160)
    before, after = topk(ins.trace.output[0], classes, 1)[0], topk(now.trace.output[0], classes, 1)[0]
    attentive = bool(now.trace.layers)  # a baseline (AD = 0) is inspected too: label it, compare it with attention
    c2.metric("Attention model" if attentive else "This model (a baseline, AD = 0)", after[0],
              f"{after[1]:.1%} (was {before[0]} {before[1]:.1%})", delta_color="off", delta_arrow="off")
    verdict = rectification(now.trace, 0, res.get("label"))
    c2.caption(f"network alone: {topk(now.trace.net_output[0], classes, 1)[0][0]} · {verdict}")
    partners = {label: source for label, (source, ad) in state.checkpoints_for(classes).items()
                if (ad == 0) == attentive and source != res["path"]}
    kind = "Baseline" if attentive else "Attention model"
    if partners:
        label, source = next(iter(partners.items()))
        pmodel, pmeta = state.get_model(source, res["device"])
        other = state.cached_inspection(pmodel, pmeta, (f"lab-{digest}", "lab", source, res["device"]), x[None])
        top = topk(other.trace.output[0], classes, 1)[0]
        c3.metric(f"{kind} ({label})", top[0], f"{top[1]:.1%}", delta_color="off", delta_arrow="off")
    else:
        c3.info(f"No {kind.lower()} checkpoint with these classes is available for the side-by-side comparison.")
    if now.trace.layers:
        st.subheader("Attention maps")
        widgets.attention_panels(now.trace, classes, image)
        st.subheader("Gates")
        st.plotly_chart(figures.confidence_gates_figure(now.trace, 0, classes), key="lab_conf")
        st.plotly_chart(figures.global_gates_figure(now.trace, 0), key="lab_gg")
