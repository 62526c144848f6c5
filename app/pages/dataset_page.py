"""The whole data set: per-source accuracy, calibration, rectification, gates, heads, faithfulness."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import atlas_views, figures, gate_views, share, sidebar, state, training_view
from ar_core.analyze import DEFAULT_FAITHFULNESS_IMAGES, dominant_source
from ar_core.evaluate import ClassMismatchError
from ar_core.inference import filter_indices, to_hwc


def _run(model, meta, ds, n_faith: int, methods: list[str]):
    from ar_core.analyze import analyze

    bars = {}

    def progress(stage, done, total):
        if stage not in bars:
            bars[stage] = st.progress(0.0, text=f"{stage}…")
        bars[stage].progress(min(1.0, done / max(total, 1)), text=f"{stage}: {done}/{total} images")

    # float32 as the inspector traces: under autocast (CUDA, or a CPU with native bf16) a borderline image
    # could be listed as rectified here and open as not rectified there
    result, arrays = analyze(model, ds, meta, faithfulness_n=n_faith, methods=methods, progress=progress,
                             return_arrays=True, tta=state.use_tta(meta, dataset_wide=True), amp="off")
    for bar in bars.values():
        bar.empty()
    keep = {k: v.numpy() for k, v in arrays.items() if k in ("pred", "net_pred") or k.startswith("pred/")}
    if "global_gates" in arrays:
        keep["dominant"] = dominant_source(arrays["global_gates"]).numpy()
    return result, keep


def _open_in_inspector(index: int):
    """Point the inspector's dataset browser at one image and go there, noting the test-time augmentation
    the lists judged it with (at most flip over a data set; the inspector traces with the checkpoint's own)."""
    lists = st.session_state.get("_lists", {})  # what the page's lists were made from
    st.session_state.update({"source": "Dataset", "browse_class": None, "browse_outcome": "all",
                             "browse_pos": int(index),
                             "_listed": {"name": state.dataset_image_name(lists.get("dataset", ""), int(index)),
                                         "path": lists.get("path"), "tta": lists.get("tta")}})
    st.switch_page(st.session_state["_pages"]["inspect"])


def _image_list(ds, indices: np.ndarray, classes, arrays, title: str, pred: np.ndarray | None = None,
                caption=None):
    """Up to 24 images with an "Inspect" button each; ``caption(i)`` overrides the "true→predicted" caption."""
    st.markdown(f"**{title}** — {len(indices)} images" + (" (first 24 shown)" if len(indices) > 24 else ""))
    if len(indices) == 0:
        return
    shown = arrays["pred"] if pred is None else pred  # whose answer the captions give
    cols = st.columns(8)
    for j, i in enumerate(indices[:24]):
        with cols[j % 8]:
            st.image(to_hwc(ds.images[i]), width=64,
                     caption=caption(i) if caption else f"#{i} {classes[int(ds.labels[i])]}→{classes[int(shown[i])]}")
            st.button("Inspect", key=f"open_{title}_{i}", on_click=_open_in_inspector, args=(int(i),))


def _disagreement_view(ds, ds_key, classes, source, device, arrays):
    """The images on which a baseline and an attention checkpoint of the same classes disagree."""
    import torch

    from ar_core.compare import disagreements, paired

    pairs, baselines, attentive = state.comparison_pairs(classes)
    if state.explain_missing_pair(pairs, baselines, attentive):
        return
    b_index, a_index = state.default_pair(pairs, baselines, attentive, source)
    c1, c2 = st.columns(2)
    b = c1.selectbox("Baseline", baselines, index=b_index, key="ds_cmp_base")
    a = c2.selectbox("Attention model", attentive, index=a_index, key="ds_cmp_att")
    if not st.toggle("List the images on which they disagree (runs each model over the data set once)",
                     key="ds_cmp_on"):
        return
    preds, views = {}, {}
    for role, label in (("baseline", b), ("attention", a)):
        model, meta = state.get_model(pairs[label][0], device)
        preds[role] = state.dataset_predictions(model, meta, ds, (ds_key, pairs[label][0], device))["fused"]
        views[role] = state.use_tta(meta, dataset_wide=True).name  # what dataset_predictions used
    labels = ds.labels.numpy()
    test = paired(*(torch.from_numpy(preds[role] == labels) for role in ("attention", "baseline")))
    # the command-line comparison reads folders, in float32 with --amp off as this page predicts, and applies
    # one augmentation to both (--tta) or each checkpoint's own, uncapped
    cli = (f"the baseline answered with {views['baseline']} test-time augmentation, the attention model with "
           f"{views['attention']}" if views["baseline"] != views["attention"] else
           f"`python -m ar_core.compare --tta {views['baseline']} --amp off` on the same folder gives the same"
           if ds_key.startswith("folder:") else f"both with {views['baseline']} test-time augmentation")
    st.write(f"Baseline {test['accuracy_b']:.2%} right, attention model {test['accuracy_a']:.2%} right, on "
             f"{test['n']} images. Only the attention model is right on {test['only_a_right']}, only the baseline "
             f"on {test['only_b_right']}: McNemar's exact p = {test['mcnemar_p']:.3g}, the chance of so uneven a "
             f"split if each of those images were a coin flip ({cli}). Each caption gives the true class, then "
             "the baseline's answer (B) and the attention model's (A).")

    def caption(i):
        return (f"#{i} {classes[int(labels[i])]} · B {classes[int(preds['baseline'][i])]} · "
                f"A {classes[int(preds['attention'][i])]}")

    for title, indices in disagreements(labels, preds["baseline"], preds["attention"]).items():
        _image_list(ds, indices, classes, arrays, title, caption=caption)


def render():
    st.title("The whole data set")
    st.write("One image tells one story; this page runs the model over a whole data set: how accurate each "
             "source is alone, how often fusion rectified the network, how the gates behave per class, which "
             "heads specialise, and whether the attention maps are faithful to what the model uses.")
    share.apply_link()
    share.show_notes()
    chosen = sidebar.chosen_model()
    if chosen is None:
        return
    source, device, model, meta = chosen
    ds, ds_key = sidebar.dataset_picker(int(meta.get("image_size", 32)), meta)
    if st.toggle("Over training: how this model's attention, gates and accuracy formed, epoch by epoch",
                 key="dataset_history"):
        training_view.render(source, "dataset_history", ds, ds_key)
    if ds is None:
        st.info("Choose a data set in the sidebar: a CIFAR test set or an ImageFolder directory.")
        return
    classes = list(ds.classes)  # the checkpoint's, in its order (dataset_picker)
    note = state.tta_note(meta)
    if note:
        st.caption(note)
    with st.form("analysis_form"):
        c1, c2 = st.columns(2)
        n_faith = c1.number_input("Images for the faithfulness curves (0 skips them)", 0, len(ds),
                                  min(DEFAULT_FAITHFULNESS_IMAGES, len(ds)), key="faith_n",
                                  help="Each image costs about 120 model passes: 100 take ~35 s on a 2-core CPU.")
        methods = c2.multiselect("Maps to test", ["attention", "saliency", "gradcam", "integrated_gradients",
                                                  "random"], default=["attention", "saliency", "gradcam", "random"],
                                 key="faith_methods")
        go = st.form_submit_button("Analyse the data set", key="analyse_go")
    key = (ds_key, source, meta["weights_sha256"], device, int(n_faith), tuple(methods),
           state.use_tta(meta, dataset_wide=True).name)
    store = st.session_state.setdefault("analyses", {})
    if go:
        try:
            store[key] = _run(model, meta, ds, int(n_faith), methods)
        except ClassMismatchError as e:
            st.error(f"{e}. Pick a data set with the model's classes.")
            return
    if key not in store:
        st.info(f"{len(ds)} images ready. Press *Analyse the data set* (results are cached on disk, so a second "
                f"run is instant).")
        return
    r, arrays = store[key]
    # the data set, checkpoint and augmentation every list of this page was judged with
    st.session_state["_lists"] = {"dataset": ds_key, "path": source, "tta": key[-1]}
    labels = ds.labels.numpy()
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Accuracy (fused)", f"{r['accuracy']:.2%}")
    m2.metric("Network alone", f"{r['net_accuracy']:.2%}", f"{100 * (r['accuracy'] - r['net_accuracy']):+.2f} points",
              delta_color="normal")
    m3.metric("Top-5", f"{r['top5_accuracy']:.2%}")
    m4.metric("ECE", f"{r['ece']:.2%}")
    tabs = st.tabs(["Sources & rectification", "Confusion", "Calibration", "Gates & heads", "Faithfulness",
                    "Gate behaviour", "Head atlas", "Baseline vs attention"])
    with tabs[0]:
        if "source_accuracy" not in r:
            st.info("A baseline (AD = 0) has one source only.")
        else:
            st.plotly_chart(figures.bars_figure(r["source_accuracy"], "accuracy of each source alone", percent=True),
                            key="src_acc")
            c1, c2 = st.columns(2)
            src = c1.selectbox("List the images of a source", list(r["source_accuracy"]), key="src_pick")
            right = c2.radio("that it gets", ["wrong", "right"], horizontal=True, key="src_right")
            spred = {"fused": arrays["pred"], "network": arrays["net_pred"]}.get(src, arrays.get(f"pred/{src}"))
            ok = spred == labels
            _image_list(ds, np.nonzero(ok if right == "right" else ~ok)[0], classes, arrays, f"{src} {right}",
                        pred=spred)  # captioned with that source's own answer
            st.dataframe([{"": k, "images": v} for k, v in r["rectification"].items()], hide_index=True)
            per = [{"class": c, **v} for c, v in r["rectification_per_class"].items()]
            st.caption("Select a class to list its rectified and spoiled images.")
            event = st.dataframe(per, hide_index=True, on_select="rerun", selection_mode="single-row", key="rect_table")
            rows = event.selection.rows if event is not None else []
            if rows:
                c = classes.index(per[rows[0]]["class"])
                preds = {"fused": arrays["pred"], "net": arrays["net_pred"]}
                for outcome in ("rectified", "spoiled"):
                    _image_list(ds, filter_indices(labels, preds, c, outcome), classes, arrays,
                                f"{outcome} {classes[c]}")
    with tabs[1]:
        which = st.radio("Output", ["fused", "network alone"], horizontal=True, key="cm_which")
        cm = r["confusion_matrix"] if which == "fused" else r["net_confusion_matrix"]
        st.plotly_chart(figures.confusion_figure(cm, classes), key="cm_fig")
        c1, c2 = st.columns(2)
        t = c1.selectbox("True class", range(len(classes)), format_func=lambda j: classes[j], key="cm_true")
        p = c2.selectbox("Predicted class", range(len(classes)), format_func=lambda j: classes[j], key="cm_pred")
        pred = arrays["pred"] if which == "fused" else arrays["net_pred"]
        _image_list(ds, np.nonzero((labels == t) & (pred == p))[0], classes, arrays, f"true {classes[t]}, "
                    f"predicted {classes[p]}")
    with tabs[2]:
        st.plotly_chart(figures.reliability_figure(r["reliability"], r["ece"]), key="rel_fig")
    with tabs[3]:
        if "global_gates_per_class" not in r:
            st.info("A baseline (AD = 0) has no gates.")
        else:
            st.write(f"Mean entropy of the global gates: {r['global_gate_entropy']:.3f} nats. Share of images in which "
                     "each source carries the most weight:")
            st.plotly_chart(figures.bars_figure(r["dominant_source_share"], "dominant source", percent=True),
                            key="dom_fig")
            dom = st.selectbox("List the images where this source weighs most", r["sources"], key="dom_pick")
            _image_list(ds, np.nonzero(arrays["dominant"] == r["sources"].index(dom))[0], classes, arrays,
                        f"{dom} dominant")
            st.plotly_chart(figures.class_heatmap(r["global_gates_per_class"], classes, r["sources"],
                                                  "mean global gate per true class"), key="gpc_fig")
            layer = st.selectbox("Layer", list(r["confidence_gates_per_class"]), key="an_layer")
            k = len(r["head_class_mi_bits"][layer])
            st.plotly_chart(figures.class_heatmap(r["confidence_gates_per_class"][layer], classes,
                                                  [f"head {j + 1}" for j in range(k)],
                                                  f"{layer}: mean confidence gate per true class"), key="cpc_fig")
            st.dataframe([{"head": j + 1, "I(head's top class; true class), bits": round(mi, 3),
                           "favourite class": fav} for j, (mi, fav) in
                          enumerate(zip(r["head_class_mi_bits"][layer], r["head_favourite_class"][layer]))],
                         hide_index=True)
    with tabs[4]:
        f = r.get("faithfulness")
        dropped = "attention" in methods and not model.attend  # analyze tests the maps a model has
        if not f:
            st.info("Set a number of images above to compute deletion and insertion curves." if not n_faith else
                    "A baseline has no attention map to test: choose another map above." if dropped else
                    "Choose at least one map to test above.")
        else:
            if dropped:
                st.caption("A baseline has no attention map: the other maps are tested.")
            st.write(f"Over {r['faithfulness_images']} images: deletion area (lower is better: removing the most "
                     "important pixels first should kill the prediction fast) and insertion area (higher is "
                     "better). A map that does not beat *random* does not explain the model.")
            st.dataframe([{"map": m, **{k: round(v, 4) for k, v in vals.items() if k != 'n'}, "images": vals["n"]}
                          for m, vals in f.items()], hide_index=True)
    with tabs[5]:
        gate_views.dataset_gates(r)
    with tabs[6]:
        atlas_views.head_atlas(model, meta, ds, r, key, _open_in_inspector)
    with tabs[7]:
        _disagreement_view(ds, ds_key, classes, source, device, arrays)
