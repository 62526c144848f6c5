"""The inspector's sanity-check tab: cascading weight randomisation for the chosen image (layout only)."""

from __future__ import annotations

import streamlit as st

from app import figures, figures_v2, state, widgets

LABELS = {"attention": "Attention (gated)", "saliency": "Saliency", "integrated_gradients": "Integrated Gradients",
          "gradcam": "Grad-CAM"}


def image_sanity(res: dict):
    """Run the check on request and show the strip of maps per stage and the similarity curves."""
    from ar_core import sanity

    st.write("A map should depend on the model. Here the weights are destroyed step by step from the output "
             "side — first the gates and heads (global gate, attention modules, classifier), then each stage of "
             "the network down to the first — and every map is computed again for the same image and class. A map "
             "that still looks like the original once the weights are random explains the image, not the model "
             "(Adebayo et al., *Sanity checks for saliency maps*, 2018).")
    has_attention = bool(res["ins"].trace.layers)
    options = [m for m in sanity.METHODS if m != "attention" or has_attention]
    with st.form("sanity_form"):
        methods = st.multiselect("Maps to check", options, default=[m for m in options if m != "integrated_gradients"],
                                 format_func=LABELS.get, key="sanity_methods")
        go = st.form_submit_button("Run the sanity check", key="sanity_go")
    key = (*state.result_key(res), tuple(methods))
    store = st.session_state.setdefault("sanity", {})
    if go and methods:
        from ar_core.inference import from_hwc, preprocess

        model, meta = state.get_model(res["path"], res["device"])
        x = preprocess(from_hwc(res["image"]), meta)
        with st.spinner("Randomising the weights stage by stage and recomputing the maps…"):
            if len(store) >= 4:
                store.pop(next(iter(store)))
            store[key] = sanity.sanity_check(model, x, methods)
    r = store.get(key)
    if r is None:
        st.info("Choose maps and press *Run the sanity check* (a few seconds per map on a CPU).")
        return
    classes = res["ins"].classes
    st.caption(f"Explaining class {classes[r.target]} (the trained model's single-view prediction) at every stage; "
               f"computed in {r.seconds:.1f} s. Predictions per stage: "
               + ", ".join(f"{s}: {classes[p]}" for s, p in zip(r.stages, r.predictions)) + ".")
    fig = figures_v2.sanity_strip_figure(res["image"], r.stages, {LABELS[m]: v for m, v in r.maps.items()})
    widgets.show_figure(fig)
    st.download_button("Sanity strip as PNG", lambda: figures.figure_to_png(fig), "sanity-strip.png",
                       mime="image/png", key="dl_sanity_png")
    st.plotly_chart(figures_v2.sanity_curve_figure(r.stages, {LABELS[m]: s for m, s in r.scores.items()}),
                    key="sanity_curve")
    for m, s in r.scores.items():
        st.markdown(f"- **{LABELS[m]}**: {sanity.verdict(s)}.")
