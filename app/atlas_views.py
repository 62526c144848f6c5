"""The data-set page's head atlas tab: what each head looks for (layout only; numbers from ar_core.atlas)."""

from __future__ import annotations

from typing import Callable

import streamlit as st

from app import figures_v2, state
from ar_core.inference import to_hwc

MEAN_SAMPLE = 128  # images averaged for the mean maps (on request: a model run over each)


def _grid(ds, indices, gates, overlays, classes, title: str, open_image: Callable[[int], None], tag: str):
    st.markdown(f"**{title}**")
    cols = st.columns(8)
    for j, (i, g, panel) in enumerate(zip(indices, gates, overlays)):
        with cols[j % 8]:
            st.image(panel, width=72, caption=f"#{i} {ds.classes[int(ds.labels[i])]} · g={g:.2f}")
            st.button("Inspect", key=f"atlas_open_{tag}_{i}", on_click=open_image, args=(int(i),))


def head_atlas(model, meta, ds, r: dict, store_key: tuple, open_image: Callable[[int], None]):
    """Overview of every head, then one head's top and bottom images with its map over each."""
    from ar_core import atlas

    a = r.get("head_atlas")
    if not a:
        st.info("A baseline (AD = 0) has no attention heads." if "global_gates" not in r else
                "Run the analysis again to build the head atlas.")
        return
    classes = r["classes"]
    st.write(f"What does each head look for? For every attended layer and head: how accurate its own hypothesis "
             f"is alone, how often its layer trusts it most, and the {a['top']} images where its confidence gate is "
             f"highest (and lowest), each with the head's map over it.")
    rows = []
    for layer, heads in a["layers"].items():
        for h in heads:
            rows.append({"layer": layer, "head": h["head"], "own accuracy": f"{h['accuracy']:.1%}",
                         "most trusted in": f"{h['most_trusted_share']:.1%}", "mean gate": round(h["gate_mean"], 3),
                         f"classes of its top {a['top']}": ", ".join(f"{c} ×{n}" for c, n in
                                                                      list(h["top_classes"].items())[:3]),
                         "favourite class": h["favourite_class"]})
    st.dataframe(rows, hide_index=True)
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Layer", list(a["layers"]), key="atlas_layer")
    heads = a["layers"][layer]
    k = c2.selectbox("Head", range(len(heads)), format_func=lambda j: f"head {j + 1}", key="atlas_head")
    h = heads[k]
    aug = state.use_tta(meta, dataset_wide=True)
    cache = st.session_state.setdefault("atlas_maps", {})
    key = (*store_key, layer, k, aug.name)
    if key not in cache:
        if len(cache) >= 24:
            cache.pop(next(iter(cache)))
        indices = h["top_indices"] + h["bottom_indices"]
        cache[key] = atlas.head_maps(model, ds.images, meta, indices, layer, k, tta=aug)
    maps = cache[key]
    n = len(h["top_indices"])
    images = to_hwc(ds.images[h["top_indices"] + h["bottom_indices"]])
    overlays = figures_v2.map_overlays(images, maps)
    _grid(ds, h["top_indices"], h["top_gates"], overlays[:n], classes,
          f"{layer} head {k + 1}: highest confidence gate", open_image, "top")
    _grid(ds, h["bottom_indices"], h["bottom_gates"], overlays[n:], classes,
          f"{layer} head {k + 1}: lowest confidence gate", open_image, "bottom")
    means = st.session_state.setdefault("atlas_means", {})
    mkey = (*store_key, aug.name)
    if mkey not in means:
        if st.button(f"Mean attention maps over {min(MEAN_SAMPLE, len(ds))} images", key="atlas_means_go"):
            if len(means) >= 4:
                means.pop(next(iter(means)))
            with st.spinner("Averaging the maps…"):
                means[mkey] = atlas.mean_maps(model, ds.images, meta, atlas.sample(len(ds), MEAN_SAMPLE), tta=aug)
    if mkey in means:
        st.plotly_chart(figures_v2.mean_maps_figure(means[mkey], layer), key="atlas_mean_fig")
