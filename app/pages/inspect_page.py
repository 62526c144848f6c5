"""Start page: choose or upload an image and follow it through the gated attention, view by view."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import streamlit as st

from app import figures, gate_views, samples, sanity_views, share, sidebar, state, training_view, walk_views, widgets
from app.pages.about import EQUATIONS
from ar_core.evaluate import checkpoint_classes
from ar_core.inference import (OUTCOMES, ImageError, ablate, filter_indices, fit_image, from_hwc, image_digest,
                               load_image, open_image, rectification, to_hwc, to_uint8, topk, trace_to_json,
                               trace_to_npz)
from ar_core.tta import TTA

CMAPS = ["jet", "viridis", "inferno", "magma", "gray"]
TABS = ["1 · Prediction", "2 · Attention maps", "3 · Confidence gates", "4 · Global fusion", "5 · Attributions",
        "6 · Baseline vs attention", "7 · Over training", "Export", "Sanity check", "Walk me through"]


def _readable(raw):
    """The uploads whose header passes the limits, as (name, bytes, no label); each other one gets its error.
    Headers only: a rerun must not decode every photo of a long list (a 12-megapixel JPEG takes about 0.3 s)."""
    good = []
    for name, data in raw:
        try:
            open_image(data, name)
            good.append((name, data, None))
        except ImageError as e:
            st.error(str(e))
    return good


def _model_input(name: str, data: bytes, fit: str, size: int):
    """(the photo region the model sees, up to 512 pixels a side, as an array; the model's uint8 input) of the
    picked upload, or None after showing why not.

    Kept in the session for the last file's content, fit and size, so reruns (any click outside a fragment)
    neither decode nor resize it again; the full decoded photo (up to 40 megapixels) is not kept."""
    from ar_core.photo import model_view

    key = (hashlib.sha256(data).hexdigest(), fit, size)
    memo = st.session_state.get("model_input")
    if memo is None or memo[0] != key:
        try:
            original = load_image(data, name)
        except ImageError as e:
            st.error(str(e) + ("; the views below still show the last image" if "result" in st.session_state
                               else ""))
            return None
        x = to_uint8(fit_image(original, size, fit)).unsqueeze(0)
        memo = st.session_state["model_input"] = (key, np.asarray(model_view(original, fit, size=size)), x)
    return memo[1], memo[2]


def _uploads():
    files = st.file_uploader("Images (PNG, JPEG, WebP, BMP, GIF, TIFF)", accept_multiple_files=True, key="images",
                             on_change=samples.drop_sample)
    return _readable([(f.name, f.getvalue()) for f in (files or [])] or samples.sample_images())


def _camera():
    shot = st.camera_input("Take a picture", key="camera")
    return _readable([("camera.jpg", shot.getvalue())]) if shot is not None else []


def _random_pos(n: int):
    st.session_state["browse_pos"] = int(np.random.default_rng().integers(n))


def _follow_model(res: dict | None, path: str, device: str, model, meta: dict) -> dict | None:
    """The shown result, traced again by the sidebar's model when it came from another: a checkpoint, device or
    augmentation chosen while no image is at hand, or the checkpoint file replaced under its name since (a new
    release pulled into a running server). No view may show one model's answers beside another's card.

    The stored model input is what the model saw, so it is traced as it is when the new model takes the same
    size and classes; otherwise (its fit and its true label would be the old model's) the result is dropped."""
    if res is None:
        return None
    aug = state.use_tta(meta).name
    if (res["path"], res["device"], res["weights"], res["tta"]) == (path, device, meta["weights_sha256"], aug):
        return res
    size = int(meta.get("image_size", 32))
    classes = checkpoint_classes(meta, meta["config"]["num_classes"])
    if res["image"].shape[:2] != (size, size) or list(res["ins"].classes) != list(classes):
        st.session_state.pop("result", None)
        st.info(f"The last image ({res['name']}) was traced by a model of other classes or another input size; "
                f"pick an image for this one.")
        return None
    ins = state.cached_inspection(model, meta, (res["digest"], res["fit"], path, device), from_hwc(res["image"]))
    res = st.session_state["result"] = {**res, "ins": ins, "path": path, "device": device,
                                        "weights": meta["weights_sha256"], "tta": ins.trace.augmentation}
    return res


def _per_image(key: str, res: dict, default) -> None:
    """Give the widget ``key`` its ``default`` for each new inspected image (or model): a keyed widget keeps its
    value across reruns, so without this the previous image's predicted class would stay chosen. What the user
    (or a shared link, for the image it opens: app.share.show_notes) chose for this image stays."""
    owner, current = f"{key}_for", state.result_key(res)
    if st.session_state.get(owner) != current or key not in st.session_state:
        st.session_state[key], st.session_state[owner] = default, current


def _dataset_browser(model, meta, size: int, ckpt_key: tuple):
    ds, ds_key = sidebar.dataset_picker(size, meta)  # labels in the checkpoint's class order
    if ds is None:
        return []
    st.session_state["lab_clutter_images"] = ds.images[:256]  # the lab's clutter: patches of real images
    st.session_state["browse_dataset"] = (ds, ds_key)  # the over-training view finds its probe images here
    labels = ds.labels.numpy()
    c1, c2, c3 = st.columns([2, 2, 1])
    cls = c1.selectbox("Class", [None, *np.unique(labels).tolist()], key="browse_class",
                       format_func=lambda c: "all classes" if c is None else ds.classes[c])
    outcome = c2.selectbox("Outcome", OUTCOMES, key="browse_outcome",
                           help="correct/wrong: the fused answer; rectified: the network alone was wrong and "
                                "the fused answer is right; spoiled: the reverse")
    preds = state.dataset_predictions(model, meta, ds, (ds_key, *ckpt_key)) if outcome != "all" else None
    if preds is not None and state.tta_note(meta):
        used, own = state.use_tta(meta, dataset_wide=True), state.use_tta(meta)
        st.caption(f"The outcome filter judges every image with {used.name} test-time augmentation (a pass over "
                   f"the whole folder); the image below is traced with the checkpoint's own {own.name}, so on a "
                   f"borderline image its verdict can differ. Choose {own.name} in the sidebar to filter with it.")
    idx = filter_indices(labels, preds, cls, outcome)
    if len(idx) == 0:
        st.info("No image matches these filters.")
        return []
    if st.session_state.get("browse_pos", 0) > len(idx) - 1:
        st.session_state["browse_pos"] = 0
    c3.button("Random pick", key="random_pick", on_click=_random_pos, args=(len(idx),))
    samples.consume_random_pick(len(idx))
    pos = st.number_input(f"Image ({len(idx)} match)", 0, len(idx) - 1, key="browse_pos")
    i = int(idx[pos])
    from PIL import Image

    img = Image.fromarray(to_hwc(ds.images[i]))
    label = int(labels[i])
    st.caption(f"Image #{i} · true label: **{ds.classes[label]}**")
    return [(state.dataset_image_name(ds_key, i), img, label)]


def render():
    st.title("Attend & Rectify Explorer")
    st.write("Pick an image and see where each attention head looked, how much each gate trusted it, and how "
             "the final answer was fused — and possibly rectified.")
    share.apply_link(TABS)
    chosen = sidebar.chosen_model()
    if chosen is None:
        return
    path, device, model, meta = chosen
    size = int(meta.get("image_size", 32))
    source = st.radio("Image source", ["Upload", "Dataset", "Camera"], horizontal=True, key="source")
    if source == "Upload":
        images = _uploads()
    elif source == "Camera":
        images = _camera()
    else:
        images = _dataset_browser(model, meta, size, (path, device))
    fit = "center-crop"
    if source != "Dataset":
        fit = st.radio("Fit to the model's input", ["center-crop", "pad"], horizontal=True, key="fit",
                       help=f"The model sees {size}x{size} pixels: crop the centre square, or pad to a square.")
    x = None
    if images:
        names = [n for n, _, _ in images]
        pick = st.selectbox("Image", range(len(images)), format_func=lambda j: names[j], key="pick") \
            if len(images) > 1 else 0
        name, image, true_label = images[pick]
        t0 = time.perf_counter()
        photo = None  # the photo region the model saw, at the photo's resolution: uploads and camera shots only
        if source == "Dataset":  # a model-sized image already
            x = to_uint8(fit_image(image, size, fit)).unsqueeze(0)
        else:
            photo, x = _model_input(name, image, fit, size) or (None, None)  # None: as a bad file
    if x is not None:
        digest = image_digest(x)  # what the model sees: the file's content after the fit
        result = state.cached_inspection(model, meta, (digest, fit, path, device), x)
        st.session_state["result"] = {"name": name, "image": to_hwc(x[0]), "ins": result,
                                      "digest": digest, "fit": fit, "tta": result.trace.augmentation,
                                      "label": true_label, "path": path, "weights": meta["weights_sha256"],
                                      "device": device,
                                      "wall_ms": (time.perf_counter() - t0) * 1000, "source": source,
                                      "index": int(name.rsplit("#", 1)[1]) if source == "Dataset" else None,
                                      "photo": photo}
    res = _follow_model(st.session_state.get("result"), path, device, model, meta)
    share.show_notes(res)
    if res is None:
        st.info("Upload an image, take a picture, or browse a dataset to begin.")
        samples.start_buttons()
        return
    _views(res, model, meta)


def _views(res, model, meta):
    ins = res["ins"]
    trace, classes = ins.trace, ins.classes
    t_start = time.perf_counter()
    c1, c2 = st.columns([1, 4])
    with c1:
        st.image(res["image"], caption=f"{res['name']}: model input", width=160)
        share.link_control(res, trace, classes)
    with c2:
        pred = topk(trace.output[0], classes, 1)[0]
        net = topk(trace.net_output[0], classes, 1)[0]
        verdict = rectification(trace, 0, res.get("label"))
        st.metric("Prediction (fused)", pred[0], f"{pred[1]:.1%} probability", delta_color="off", delta_arrow="off")
        if verdict == "rectified":
            st.success(f"**Rectified.** The network alone says {net[0]} ({net[1]:.1%}), which is wrong; the fused "
                       f"output says {pred[0]}, which is right.")
        elif verdict == "spoiled":
            st.error(f"**Spoiled.** The network alone was right ({net[0]}); the fused output says {pred[0]}.")
        elif verdict == "changed":
            st.info(f"Attention changed the answer: the network alone says **{net[0]}** ({net[1]:.1%}).")
        else:
            st.caption(f"The network alone says {net[0]} ({net[1]:.1%})"
                       + (f"; true label {classes[res['label']]}." if res.get("label") is not None else "."))
        listed = st.session_state.get("_listed") or {}
        if (listed.get("name"), listed.get("path")) == (res["name"], res["path"]) and \
                listed.get("tta") not in (None, trace.augmentation):
            st.caption(f"The data-set page listed this image as judged with {listed['tta']} test-time "
                       f"augmentation; it is traced here with {trace.augmentation}. Choose {listed['tta']} in the "
                       f"sidebar's Test-time augmentation to see it as listed.")
        tta = f" · {trace.augmentation} test-time augmentation: {_averaged(trace)}" if trace.views else ""
        if len(trace.views) > 2:  # a model run per view: say where a quicker answer is
            tta += f" (flip in the sidebar's Test-time augmentation: 2 views, about {len(trace.views) // 2}x sooner)"
        st.caption(f"Device {ins.device} · model run {ins.latency_ms:.0f} ms{tta}")

    # Only the open tab is built: switching tabs reruns the page (the tabs are bound to the address),
    # so a hidden tab costs nothing until someone opens it.
    tabs = st.tabs(TABS, key=share.TAB_KEY, bind="query-params")
    shown = next((j for j, tab in enumerate(tabs) if tab.open), 0)
    with tabs[shown]:
        _tab(shown, res, trace, classes)
    st.caption(f"Image chosen → this tab laid out in "
               f"{(time.perf_counter() - t_start) * 1000 + res.get('wall_ms', 0):.0f} ms (model run included).")


def _tab(j: int, res, trace, classes):
    """The content of tab ``j`` of :data:`TABS`."""
    if j == 0:
        st.write("Top-5 classes of the fused output, of the network's own output, and of each attended layer's "
                 "hypothesis. Probabilities are the softmax of each source's scores.")
        st.latex(EQUATIONS[5][1])
        st.plotly_chart(figures.prediction_figure(trace, 0, classes), key="pred_fig")
    elif j in (1, 2, 3) and not trace.layers:
        st.info("This is a baseline (AD = 0): it has no attention modules or gates to show.")
    elif j == 1:
        _attention_view(trace, classes, res["image"], walk_views.original_photo(res, trace))
    elif j == 2:
        st.write("Each module weighs its K heads by a confidence gate computed from what the head attended. "
                 "A head with a high gate dominates its layer's hypothesis.")
        st.latex(EQUATIONS[2][1])
        st.plotly_chart(figures.confidence_gates_figure(trace, 0, classes), key="conf_fig")
        gate_views.image_gates(trace, [l.name for l in trace.layers], "gv_conf")
    elif j == 3:
        _fusion_view(res, trace, classes)
        gate_views.image_gates(trace, ["global"], "gv_glob")
    elif j == 4:
        _attribution_view(res)
    elif j == 5:
        _compare_view(res)
    elif j == 6:
        st.write("How this model's attention maps, gates and answers formed while it trained, traced on fixed "
                 "probe images after every epoch.")
        if st.toggle("Show the probe images over training", key="inspect_history_on"):
            browsed = st.session_state.get("browse_dataset") if st.session_state.get("source") == "Dataset" else None
            training_view.render(res["path"], "inspect_history", *(browsed or (None, None)))
    elif j == 7:
        _export_view(res)
    elif j == 8:
        sanity_views.image_sanity(res)
    elif j == 9:
        walk_views.guided_walk(res, trace, classes)


def _averaged(trace) -> str:
    """What every number of a test-time-augmented trace is, in words."""
    return TTA.parse(trace.augmentation).describe()


def _export_view(res):
    ins, base = res["ins"], res["name"].rsplit(".", 1)[0].replace("#", "-").replace(":", "-")
    trace, classes = ins.trace, ins.classes
    st.write("Download the whole trace (every map, gate, hypothesis and fusion term) or the figures. Every "
             "interactive chart also has a camera icon that saves it as PNG.")
    extra = {"image": res["name"], "checkpoint": os.path.basename(res["path"]), "true_label": res.get("label"),
             "test_time_augmentation": trace.augmentation}
    st.download_button("Trace as JSON", lambda: trace_to_json(trace, classes, 0, extra), f"{base}-trace.json",
                       mime="application/json", key="dl_json")
    st.download_button("Trace as NPZ", lambda: trace_to_npz(trace, 0), f"{base}-trace.npz",
                       mime="application/octet-stream", key="dl_npz")
    if trace.layers:
        alpha, cmap = st.session_state.get("alpha", 0.55), st.session_state.get("cmap", "jet")
        st.download_button("Attention maps as PNG", lambda: figures.figure_to_png(
            figures.attention_grid(res["image"], trace, 0, classes, alpha, cmap)), f"{base}-attention.png",
            mime="image/png", key="dl_png")


def _attribution_view(res):
    from ar_core.attribution import METHODS

    ins = res["ins"]
    trace, classes = ins.trace, ins.classes
    st.write("Classic attribution methods (Captum) explain the fused output for a chosen class; the agreement "
             "scores say how much each one agrees with the attention of an attended layer (its heads mixed by "
             "their confidence gates). Heavy methods run only when you ask.")
    st.latex(r"A^l = \sum_k g^l_k H^l_k \quad\text{vs.}\quad \mathrm{attribution}(x)\;\text{for}\;"
             r"\arg\max\,\mathrm{output}")
    pred = int(trace.output[0].argmax())
    with st.form("attr_form"):
        c1, c2 = st.columns(2)
        state.restore_widget("attr_methods", lambda v: set(v) <= set(METHODS))
        methods = c1.multiselect("Methods", list(METHODS), default=["saliency", "gradcam"],
                                 format_func=METHODS.get, key="attr_methods")
        _per_image("attr_target", res, pred)
        target = c2.selectbox("Class to explain", range(len(classes)), format_func=lambda c: classes[c],
                              key="attr_target")
        layer_names = [l.name for l in trace.layers] or ["last"]
        c3, c4 = st.columns(2)
        state.restore_widget("attr_layer", lambda v: v in layer_names)
        state.restore_widget("attr_nt", lambda v: True)
        cam_layer = c3.selectbox("Grad-CAM layer", layer_names, index=len(layer_names) - 1, key="attr_layer")
        tunnel = c4.checkbox("NoiseTunnel (SmoothGrad) on IG and Saliency", key="attr_nt")
        go = st.form_submit_button("Compute attributions", key="attr_go")
    key = (*state.result_key(res), target, cam_layer, tunnel)
    store = st.session_state.setdefault("attributions", {})
    if go and methods:
        from ar_core.attribution import SMOOTHGRAD_METHODS, attribute
        from ar_core.inference import preprocess

        model, meta = state.get_model(res["path"], res["device"])
        device = next(model.parameters()).device
        x = preprocess(from_hwc(res["image"]), meta).to(device)
        done = store.setdefault(key, {})
        with st.status("Computing attributions…", expanded=True) as status:
            for m in methods:
                if m in done:
                    continue
                st.write(f"{METHODS[m]}…")
                done[m] = attribute(model, x, target, m, layer=cam_layer,
                                    noise_tunnel=tunnel and m in SMOOTHGRAD_METHODS)
                st.write(f"{METHODS[m]}: {done[m].seconds * 1000:.0f} ms")
            status.update(label="Attributions ready", state="complete")
    results = store.get(key, {})
    if not results:
        st.info("Choose methods and press *Compute attributions*.")
        return
    from ar_core.attribution import agreement, layer_attention

    att_maps = {l.name: layer_attention(trace, 0, j, res["image"].shape[0]) for j, l in enumerate(trace.layers)}
    fig = figures.attribution_figure(res["image"], att_maps, {METHODS[m]: a.map for m, a in results.items()})
    widgets.show_figure(fig)
    st.download_button("Attributions as PNG", lambda: figures.figure_to_png(fig), "attributions.png",
                       mime="image/png", key="dl_attr_png")
    rows = []
    for m, a in results.items():
        for lname, amap in att_maps.items():
            sc = agreement(amap, a.map)
            rows.append({"method": METHODS[m], "attention layer": lname, "rank correlation": round(sc["spearman"], 3),
                         "top-20 % overlap": round(sc["top20_overlap"], 3), "time (ms)": round(a.seconds * 1000)})
    if rows:
        st.dataframe(rows, hide_index=True)
    _faithfulness_view(res, key, target, results)


def _faithfulness_view(res, attribution_key: tuple, target: int, results):
    """Deletion/insertion curves of this image for the attention and each computed attribution."""
    from ar_core.attribution import METHODS, gated_attention
    from ar_core.faithfulness import curves_for_maps, random_saliency
    from ar_core.inference import preprocess

    st.subheader("Faithfulness of the maps for this image")
    st.write("Delete the pixels a map ranks highest first (blurred away) and watch the class probability: a "
             "faithful map makes it fall fast (low deletion area); reveal them first and it should rise fast (high "
             "insertion area). The random order is the bar to beat.")
    key = ("faith", *attribution_key, tuple(results))  # the maps depend on the class, Grad-CAM layer and tunnel
    store = st.session_state.setdefault("faith_curves", {})
    if key not in store:
        if not st.button("Compute deletion and insertion curves", key="faith_go"):
            return
        model, meta = state.get_model(res["path"], res["device"])
        x = preprocess(from_hwc(res["image"]), meta).to(next(model.parameters()).device)
        trace = res["ins"].trace
        maps = {}
        if trace.layers:
            maps["attention (all layers, gated)"] = gated_attention(trace, 0, res["image"].shape[0])
        maps.update({METHODS[m]: a.map for m, a in results.items()})
        maps["random"] = random_saliency(res["image"].shape[:2], seed=0)
        with st.spinner("Perturbing…"):
            store[key] = curves_for_maps(model, x, target, maps)
    got = store[key]
    st.plotly_chart(figures.faithfulness_figure(got), key="faith_fig")
    st.dataframe([{"map": n, "deletion area (lower is better)": round(c.deletion_area, 4),
                   "insertion area (higher is better)": round(c.insertion_area, 4)} for n, c in got.items()],
                 hide_index=True)


def _compare_view(res):
    """The same image through a baseline and an attention checkpoint of the same classes."""
    classes = res["ins"].classes
    pairs, baselines, attentive = state.comparison_pairs(classes)
    if state.explain_missing_pair(pairs, baselines, attentive):
        return
    st.write("The same image through the plain network (baseline, trained with the same recipe and budget) and "
             "the network with gated attention. With AD = 0 the fusion has one source, so the output is the "
             "network's own; attention adds N hypotheses and their gates.")
    st.latex(r"\text{baseline: } \log\mathrm{softmax}(o_{net}) \qquad \text{attention: } g_{net}\log\mathrm{softmax}"
             r"(o_{net}) + \sum_l g_O^l \log\mathrm{softmax}(o^l)")
    c1, c2 = st.columns(2)
    b_index, a_index = state.default_pair(pairs, baselines, attentive, res["path"])
    b = c1.selectbox("Baseline", baselines, index=b_index, key="cmp_base")
    a = c2.selectbox("Attention model", attentive, index=a_index, key="cmp_att")
    x = from_hwc(res["image"])
    runs = []  # (model, meta, trace) of the baseline, then of the attention model
    for col, label in ((c1, b), (c2, a)):
        path = pairs[label][0]
        model, meta = state.get_model(path, res["device"])
        other = state.cached_inspection(model, meta, (res["digest"], "cmp", path, res["device"]), x)
        runs.append((model, meta, other.trace))
        with col:
            top = topk(other.trace.output[0], classes, 5)
            st.markdown(f"**{label}** → **{top[0][0]}** ({top[0][1]:.1%})")
            st.dataframe([{"class": n, "probability": round(p, 4)} for n, p, _ in top], hide_index=True)
            if other.trace.layers:
                widgets.attention_panels(other.trace, classes, res["image"], 0.55, "jet", captions=False)
    _compare_maps(res, (pairs[b][0], pairs[a][0]), runs)


def _compare_maps(res, paths, runs):
    """Where each model looks: the baseline's Grad-CAM beside the attention model's gated map and Grad-CAM."""
    from ar_core.attribution import compare_maps
    from ar_core.inference import preprocess

    st.subheader("Where each model looks")
    st.write("The baseline has no attention, so Grad-CAM (last feature map) is its map; the attention model has "
             "its gated attention (every layer's heads mixed by their confidence gates, weighted by the global "
             "gates) and its Grad-CAM. Each Grad-CAM explains that model's own answer.")
    augs = tuple(t.augmentation for _, _, t in runs)  # each trace's test-time augmentation
    for t in {t.augmentation: t for _, _, t in runs if t.views}.values():
        st.caption(f"With {t.augmentation} test-time augmentation the gated attention and the answers are "
                   f"{_averaged(t)}; Grad-CAM explains the single, un-augmented pass.")
    key = (res["digest"], res["fit"], *paths, *(m["weights_sha256"] for _, m, _ in runs), res["device"], *augs)
    store = st.session_state.setdefault("compare_maps", {})
    if key not in store:
        if not st.button("Compute the maps of both models", key="cmp_maps_go"):
            return
        x = from_hwc(res["image"])
        inputs = [(m, t, preprocess(x, meta).to(next(m.parameters()).device)) for m, meta, t in runs]
        t0 = time.perf_counter()
        maps = compare_maps(*inputs[0], *inputs[1])
        store[key] = (maps, time.perf_counter() - t0)
    maps, seconds = store[key]
    widgets.show_figure(figures.attribution_figure(res["image"], {}, maps))
    st.caption(f"Computed in {seconds * 1000:.0f} ms.")


def _attention_view(trace, classes, image, photo=None):
    st.write("Each row is an attended layer, each column one of its K heads. Bright regions are where the head "
             "looked; the caption gives the head's top class and its confidence gate g."
             + (f" With {trace.augmentation} test-time augmentation every map, class and gate is {_averaged(trace)}."
                if trace.views else ""))
    st.latex(EQUATIONS[0][1])
    _overlays(trace, classes, image, photo)
    _heatmap(trace, classes)


@st.fragment
def _overlays(trace, classes, image, photo=None):
    """The overlay grid (and the maps on the photo region ``photo``, when shown) and their display controls:
    a control reruns this fragment only."""
    t0 = time.perf_counter()
    c1, c2 = st.columns(2)
    alpha = c1.slider("Overlay opacity", 0.0, 1.0, 0.55, 0.05, key="alpha")
    cmap = c2.selectbox("Colormap", CMAPS, key="cmap")
    widgets.attention_panels(trace, classes, image, alpha, cmap)
    st.caption(f"Overlays at opacity {alpha:.2f} ({cmap}) drawn in {(time.perf_counter() - t0) * 1000:.0f} ms.")
    if photo is not None:
        walk_views.on_original(photo, len(image), trace, alpha, cmap)


def _heatmap(trace, classes):
    """The hover heatmap of one head. Not a fragment: its layer and head are part of the view's link (the
    address bar and *Copy link*, laid out above it), which a fragment's rerun would leave behind."""
    c1, c2 = st.columns(2)
    heads = trace.layers[0].attention_maps.shape[1]
    state.restore_widget("hm_layer", lambda v: 0 <= v < len(trace.layers))
    state.restore_widget("hm_head", lambda v: 0 <= v < heads)
    layer = c1.selectbox("Layer", range(len(trace.layers)), format_func=lambda j: trace.layers[j].name, key="hm_layer")
    head = c2.selectbox("Head", range(heads), format_func=lambda k: f"head {k + 1}",
                        key="hm_head")
    st.plotly_chart(figures.attention_heatmap(trace, 0, layer, head, classes), key="heatmap")


@st.fragment
def _fusion_view(res, trace, classes):
    st.write("The global gates weigh every attended layer and the network's own output; the fused score of a "
             "class is the sum of each source's gate times its log-probability."
             + (f" With {trace.augmentation} test-time augmentation each bar is the mean of that term over the "
                f"{len(trace.views)} views (not the mean gate times the mean log-probability)." if trace.views else ""))
    st.latex(EQUATIONS[4][1])
    st.plotly_chart(figures.global_gates_figure(trace, 0), key="gg_fig")
    pred = int(trace.output[0].argmax())
    _per_image("contrib_classes", res, [pred])
    extra = st.multiselect("Classes to decompose", range(len(classes)), format_func=lambda c: classes[c],
                           key="contrib_classes")
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
