"""Shareable views: the URL's query parameters hold the checkpoint, image and view settings.

A link is applied once, when a session starts (opening the URL in a new browser); from then on the
URL follows what the page shows, so copying it shares the view. Uploaded images and checkpoints
live in the session only and are never put in a link. A bad or unknown value falls back to the
default with a short note, never an error.

    ?checkpoint=cifar100-wrn16x4-ad3aw4&source=dataset&dataset=cifar100&index=42&tab=2+·+Attention+maps
     &layer=group2&head=3&class=apple&tta=flip
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import streamlit as st

from app import state
from app.sidebar import DATASETS
from ar_core.evaluate import checkpoint_classes

PARAMS = ("checkpoint", "tta", "source", "dataset", "index", "layer", "head", "class")
SOURCES = {"upload": "Upload", "dataset": "Dataset", "camera": "Camera"}
DATASET_NAMES = dict(zip(("cifar10", "cifar100", "folder"), DATASETS))
LINKED = "link"  # marks a widget value set by a shared link, for the image that link opens
TAB_KEY = "tab"  # the inspector's tabs are bound to this query parameter by Streamlit itself


def _linked_labels() -> dict[str, str]:
    """Checkpoint name (file stem) → sidebar label, for every checkpoint that lives on disk."""
    return {Path(source).stem: label for label, source in state.model_choices().items()
            if not source.startswith(state.UPLOAD_PREFIX)}


def apply_link(tabs: list[str] | None = None):
    """Copy a new session's query parameters into the widgets' state; note every value that is refused.

    ``tabs``: the page's tab labels, when its tabs are bound to the URL (to note an unknown one).
    """
    if st.session_state.get("_link_applied"):
        return
    st.session_state["_link_applied"] = True
    q = {k: st.query_params.get(k) for k in (*PARAMS, TAB_KEY) if st.query_params.get(k) not in (None, "")}
    if not q:
        return
    notes, ss = [], st.session_state
    labels = _linked_labels()
    if "checkpoint" in q:
        if q["checkpoint"] in labels:
            ss["model_label"] = labels[q["checkpoint"]]
        else:
            notes.append(f"checkpoint {q['checkpoint']!r} is not available here (available: {', '.join(labels)})")
    if "tta" in q:
        tta = "as trained" if q["tta"] == "as-trained" else q["tta"]
        if tta in state.TTA_CHOICES:
            ss["tta"] = tta
        else:
            notes.append(f"test-time augmentation {q['tta']!r} is not one of as-trained, "
                         f"{', '.join(state.TTA_CHOICES[1:])}")
    for param, choices, key, what in (("source", SOURCES, "source", "image source"),
                                      ("dataset", DATASET_NAMES, "dataset_kind", "dataset")):
        if param not in q:
            continue
        if q[param] in choices:
            ss[key] = choices[q[param]]
        else:
            notes.append(f"{what} {q[param]!r} is not one of {', '.join(choices)}")
    if "index" in q:
        if q["index"].isdigit():
            ss.update({"browse_class": None, "browse_outcome": "all", "browse_pos": int(q["index"]),
                       "_link_index": int(q["index"])})
        else:
            notes.append(f"image index {q['index']!r} is not a number")
    if tabs is not None and TAB_KEY in q and q[TAB_KEY] not in tabs:
        notes.append(f"there is no view {q[TAB_KEY]!r}")
    meta = state.checkpoint_meta(state.model_choices().get(ss.get("model_label"), next(iter(state.model_choices()),
                                                                                       ""))) or {}
    _apply_model_params(q, meta, notes)
    ss["_link_notes"] = notes


def _apply_model_params(q: dict, meta: dict, notes: list[str]):
    """Layer, head and class, checked against the linked checkpoint's own layers and classes."""
    from ar_core.model import ModelConfig

    try:
        cfg = ModelConfig.from_dict(meta["config"])
        layers, width = list(cfg.attended), cfg.attention_width
        classes = checkpoint_classes(meta, cfg.num_classes)  # as the inspector names them
    except (KeyError, TypeError, ValueError):
        layers, width, classes = [], 0, list(meta.get("classes") or [])
    if "layer" in q:
        if q["layer"] in layers:
            st.session_state["hm_layer"] = layers.index(q["layer"])
        else:
            notes.append(f"layer {q['layer']!r} is not attended by this checkpoint"
                         + (f" ({', '.join(layers)})" if layers else ""))
    if "head" in q:
        if q["head"].isdigit() and 1 <= int(q["head"]) <= width:
            st.session_state["hm_head"] = int(q["head"]) - 1
        else:
            notes.append(f"head {q['head']!r} is not between 1 and {width}")
    if "class" in q:
        if q["class"] in classes:
            st.session_state["attr_target"] = classes.index(q["class"])
            st.session_state["attr_target_for"] = LINKED  # for the image the link opens
        else:
            notes.append(f"class {q['class']!r} is not one of this checkpoint's classes")


def show_notes(res: dict | None = None):
    """The link's refused values, once, as one short note (with the image index actually shown)."""
    notes = list(st.session_state.get("_link_notes", []))
    wanted = st.session_state.get("_link_index")
    if wanted is not None and res is not None and res.get("source") == "Dataset" and res.get("index") != wanted:
        notes.append(f"image {wanted} is not in this data set; showing image {res.get('index')}")
        st.session_state.pop("_link_index")
    elif res is not None:
        st.session_state.pop("_link_index", None)
    if res is not None and st.session_state.get("attr_target_for") == LINKED:
        # the link's class belongs to the image it opened, the first shown after it, not to whichever
        # image is on screen when the Attributions tab is first opened
        st.session_state["attr_target_for"] = state.result_key(res)
    if notes:
        st.caption("Link: " + "; ".join(notes) + ". Showing the defaults instead.")
        st.session_state["_link_notes"] = []


def view_params(res: dict, trace, classes: list[str]) -> tuple[dict[str, str], list[str]]:
    """The query parameters of the view on screen, and what a link cannot carry."""
    ss, missing = st.session_state, []
    params: dict[str, str] = {}
    source = state.model_choices().get(ss.get("model_label"), "")
    if source and not source.startswith(state.UPLOAD_PREFIX):
        params["checkpoint"] = Path(source).stem
    elif source:
        missing.append("the uploaded checkpoint")
    if ss.get("tta", state.TTA_CHOICES[0]) != state.TTA_CHOICES[0]:
        params["tta"] = ss["tta"]
    kind = {v: k for k, v in SOURCES.items()}.get(res.get("source"), "upload")
    params["source"] = kind
    if kind == "dataset" and res.get("index") is not None:
        params["dataset"] = {v: k for k, v in DATASET_NAMES.items()}.get(ss.get("dataset_kind"), "cifar10")
        params["index"] = str(res["index"])
    elif kind != "dataset":
        missing.append("uploaded images and camera shots")
    if trace.layers:
        kept = ss.get(state.KEPT_WIDGETS, {})  # the heatmap's layer and head while their tab is closed
        layer = ss.get("hm_layer", kept.get("hm_layer", 0))
        if isinstance(layer, int) and layer < len(trace.layers):
            params["layer"] = trace.layers[layer].name
        head = int(ss.get("hm_head", kept.get("hm_head", 0)))
        params["head"] = str(head + 1 if head < trace.layers[0].attention_maps.shape[1] else 1)
    target = ss.get("attr_target")
    if isinstance(target, int) and 0 <= target < len(classes):
        params["class"] = classes[target]
    return params, missing


def sync_url(params: dict[str, str]):
    """Make the browser's URL show ``params`` (the bound tab parameter is Streamlit's own)."""
    for k in PARAMS:
        if k in params:
            if st.query_params.get(k) != params[k]:
                st.query_params[k] = params[k]
        elif k in st.query_params:
            del st.query_params[k]


def link(params: dict[str, str]) -> str:
    base = (st.context.url or "").split("?")[0]
    tab = st.session_state.get(TAB_KEY) or st.query_params.get(TAB_KEY)  # before the tabs exist: the URL's
    return f"{base}?{urlencode({**params, **({TAB_KEY: tab} if tab else {})})}"


def link_control(res: dict, trace, classes: list[str]):
    """Keep the URL on this view and offer the link to copy."""
    params, missing = view_params(res, trace, classes)
    sync_url(params)
    with st.popover("Copy link to this view", icon=":material/link:"):
        st.code(link(params), language=None, wrap_lines=True)
        st.caption("Opening this link shows the same checkpoint, image, view and settings."
                   + (f" Not in links: {' and '.join(missing)} (they stay in this browser)." if missing else ""))
