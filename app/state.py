"""Shared resources: cached models (one per process) and per-session results."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import streamlit as st
import torch

import ar_core
from ar_core.checkpoint import CheckpointError
from ar_core import inference
from ar_core.inference import Inspection
from ar_core.precision import pick_device
from ar_core.tta import NAMES as tta_names
from ar_core.tta import TTA, of_checkpoint


KEPT_WIDGETS = "_shared_widgets"  # app.main's copy of the widget values Streamlit drops


def restore_widget(key: str, valid) -> None:
    """Give a widget of a closed inspector tab back the value it had (app.main.TAB_WIDGETS), while
    ``valid(value)``: another model may lack that layer, head or method."""
    kept = st.session_state.get(KEPT_WIDGETS, {})
    if key not in st.session_state and key in kept and valid(kept[key]):
        st.session_state[key] = kept[key]


@st.cache_resource(show_spinner="Loading model…", max_entries=8)
def load_model(path: str, mtime: float, device: str):
    """One model per (file, version, device) per process, shared by every session.

    Safe to share: the forward pass keeps nothing on the modules.
    """
    model, meta = ar_core.load_checkpoint(path, device=pick_device(device))
    warm_up(model, meta)
    return model, meta


def warm_up(model, meta: dict) -> None:
    """Run the model and build the inspector's default figures once, when the model is loaded.

    The first run of a model pays for its kernels' set-up, and the first figures for plotly's,
    matplotlib's and pandas' imports; doing it here (once per cached model, not per session) keeps
    that second off the first visitor's first image.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from app import figures

    size = int(meta.get("image_size", 32))
    x = torch.full((1, 3, size, size), 128, dtype=torch.uint8)
    for tta in ("none", of_checkpoint(meta)):  # per model, not per session: the checkpoint's own
        ins = inference.inspect(model, x, meta, tta=tta)
    trace, classes = ins.trace, ins.classes
    built = [figures.prediction_figure(trace, 0, classes)]
    if trace.layers:
        figures.overlay_panels(inference.to_hwc(x[0]), trace, 0, 0.55, "jet")
        built += [figures.confidence_gates_figure(trace, 0, classes), figures.attention_heatmap(trace, 0, 0, 0, classes),
                  figures.global_gates_figure(trace, 0), figures.contributions_figure(trace, 0, classes, [0])]
    for fig in built:
        fig.to_json()
    pa.Table.from_pandas(pd.DataFrame({"class": classes[:1], "probability": np.zeros(1)}))


UPLOAD_PREFIX = "upload:"  # model sources that are uploaded bytes, kept in the session, never on disk


def model_choices() -> dict[str, str]:
    """Label → source (a file path, or ``upload:<digest>``); the first is the default.

    The operator's AR_CHECKPOINT comes first when set, then the shipped checkpoints (the CIFAR-10
    attention model first), then this session's uploads.
    """
    choices = {}
    extra = os.environ.get("AR_CHECKPOINT")
    if extra and Path(extra).is_file():
        choices[f"{Path(extra).stem} (AR_CHECKPOINT)"] = extra
    choices.update({f"{name} (shipped)": str(path) for name, path in ar_core.available_checkpoints().items()})
    for label, digest in st.session_state.get("user_checkpoints", {}).items():
        choices[label] = UPLOAD_PREFIX + digest
    return choices


def add_uploaded_checkpoint(data: bytes, name: str) -> str:
    """Verify an uploaded checkpoint in memory and offer it in this session; returns its label."""
    ar_core.checkpoint.read_checkpoint(data, name)  # raises CheckpointError with a clear message
    digest = hashlib.sha256(data).hexdigest()[:16]
    st.session_state.setdefault("uploaded_bytes", {})[digest] = data
    label = f"{Path(name).stem} (uploaded)"
    st.session_state.setdefault("user_checkpoints", {})[label] = digest
    return label


@st.cache_resource(show_spinner="Loading model…", max_entries=8)
def _load_uploaded(digest: str, device: str, _data: bytes):
    """Uploaded models are cached by content digest (the bytes themselves are not hashed again)."""
    model, meta = ar_core.load_checkpoint(_data, device=pick_device(device), name=f"upload {digest}")
    warm_up(model, meta)
    return model, meta


def get_model(source: str, device: str):
    if source.startswith(UPLOAD_PREFIX):
        digest = source[len(UPLOAD_PREFIX):]
        return _load_uploaded(digest, device, st.session_state["uploaded_bytes"][digest])
    return load_model(source, Path(source).stat().st_mtime, device)


TTA_CHOICES = ("as trained", *tta_names)
# "As trained" over a whole data set takes at most this many views per image: a checkpoint measured
# with flip-shift2 (18 views) would make the data-set page's pass 9x slower than flip's 2.
DATASET_TTA = TTA(flip=True)


def use_tta(meta: dict, dataset_wide: bool = False) -> TTA:
    """The sidebar's test-time augmentation for this checkpoint ("as trained": the checkpoint's own,
    capped at :data:`DATASET_TTA` for passes over a whole data set; :func:`tta_note` says so)."""
    choice = st.session_state.get("tta", TTA_CHOICES[0])
    if choice != TTA_CHOICES[0]:
        return TTA.parse(choice)
    own = of_checkpoint(meta)
    return DATASET_TTA if dataset_wide and own.views > DATASET_TTA.views else own


def tta_note(meta: dict) -> str | None:
    """Why a data-set pass uses fewer views than the checkpoint's figure (None when it does not)."""
    own, used = of_checkpoint(meta), use_tta(meta, dataset_wide=True)
    if used == own or st.session_state.get("tta", TTA_CHOICES[0]) != TTA_CHOICES[0]:
        return None
    return (f"This checkpoint's validation figure uses {own.name} test-time augmentation ({own.views} views per "
            f"image); over a whole data set the app uses {used.name} ({used.views} views) to answer "
            f"{own.views // used.views}x sooner. Choose {own.name} in the sidebar for the checkpoint's own figures.")


def dataset_image_name(ds_key: str, index: int) -> str:
    """How image ``index`` of a data set is named on screen and in exports: a folder by its own name,
    never by its path on the server (a data-set key holds the path, to tell folders apart)."""
    kind, _, where = ds_key.partition(":")
    return f"{kind}:{Path(where.rpartition('@')[0]).name}#{index}" if kind == "folder" else f"{ds_key}#{index}"


def result_key(res: dict) -> tuple:
    """What a cached result for the inspected image depends on: the model input's pixels (the image's content
    after the fit), the checkpoint and its weights, the device and the test-time augmentation. Never a name
    alone: every camera shot is `camera.jpg`, two uploads may share a name, and a checkpoint file may be
    replaced under its name while the server runs."""
    return res["digest"], res["fit"], res["path"], res["weights"], res["device"], res["tta"]


def cached_inspection(model, meta, key: tuple, images: torch.Tensor) -> Inspection:
    """A trace is computed once per (image, checkpoint, device, augmentation) and kept in the session; the
    weights' digest is part of the key, so a checkpoint replaced under its name is traced again."""
    aug = use_tta(meta)
    key = (*key, aug.name, meta["weights_sha256"])
    cache = st.session_state.setdefault("traces", {})
    if key not in cache:
        if len(cache) > 64:
            cache.pop(next(iter(cache)))
        cache[key] = inference.inspect(model, images, meta, tta=aug)
    return cache[key]


DATASET_ENV = "AR_IMAGE_FOLDER"


@st.cache_data(ttl=5, show_spinner=False)
def folder_signature(path: str) -> str:
    """:func:`ar_core.data.folder_signature`, looked at most every few seconds (it lists every directory)."""
    from ar_core.data import folder_signature as signature

    return signature(path)


@st.cache_resource(show_spinner="Reading images…", max_entries=4)
def load_folder(path: str, size: int, signature: str):
    """An ImageFolder directory as uint8 tensors, shared by all sessions (read-only); ``signature``
    (:func:`folder_signature`) makes a changed folder a new entry."""
    from ar_core.data import load_image_folder

    return load_image_folder(path, size)


@st.cache_resource(show_spinner="Reading CIFAR…", max_entries=2)
def load_cifar_test(name: str, root: str, download: bool):
    from ar_core.data import load_torchvision_cifar

    return load_torchvision_cifar(name, root, train=False, download=download)


PREDICTION_SETS = 32  # data-set predictions kept per process, the least recently used dropped first


def dataset_predictions(model, meta, dataset, key: tuple):
    """Fused and network-only predictions for a dataset, once per (dataset, checkpoint's weights) per process.

    A long-running server sees folders change and checkpoints come and go: it keeps the PREDICTION_SETS
    most recently used sets only."""
    aug = use_tta(meta, dataset_wide=True)
    key = (*key, aug.name, meta["weights_sha256"])
    store, lock = _prediction_store()
    with lock:  # one store serves every session's thread
        found = store.get(key)
        if found is not None:
            store.move_to_end(key)
            return found
    from ar_core.inference import predict_all

    bar = st.progress(0.0, text="Running the model over the dataset…")
    found = predict_all(model, dataset.images, meta, progress=lambda f: bar.progress(f), tta=aug)
    bar.empty()
    with lock:
        store[key] = found
        while len(store) > PREDICTION_SETS:
            store.popitem(last=False)
    return found


@st.cache_resource
def _prediction_store() -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def checkpoint_meta(source: str) -> dict | None:
    """A checkpoint's metadata (header only), or None when it is unusable."""
    try:
        if source.startswith(UPLOAD_PREFIX):
            return ar_core.checkpoint.read_metadata(st.session_state["uploaded_bytes"][source[len(UPLOAD_PREFIX):]])
        return _checkpoint_meta(source, Path(source).stat().st_mtime)
    except (CheckpointError, OSError):
        return None


@st.cache_data(max_entries=64)
def _checkpoint_meta(path: str, mtime: float) -> dict:
    return ar_core.checkpoint.read_metadata(path)


def checkpoints_for(classes) -> dict[str, tuple[str, int]]:
    """Label → (source, attention depth) of every offered checkpoint trained on these classes."""
    pairs = {}
    for label, source in model_choices().items():
        meta = checkpoint_meta(source)
        if meta is not None and list(meta.get("classes", [])) == list(classes):
            pairs[label] = (source, meta["config"]["attention_depth"])
    return pairs


def comparison_pairs(classes) -> tuple[dict[str, tuple[str, int]], list[str], list[str]]:
    """(checkpoints for these classes, baseline labels, attention labels), for the views that set a
    baseline beside an attention model; both lists empty-checked by :func:`explain_missing_pair`."""
    pairs = checkpoints_for(classes)
    return (pairs, [l for l, (_, ad) in pairs.items() if ad == 0], [l for l, (_, ad) in pairs.items() if ad > 0])


def default_pair(pairs, baselines, attentive, source: str) -> tuple[int, int]:
    """Indices of the baseline and the attention model a comparison starts on: the selected checkpoint,
    and on the other side the first one (of the same classes, as all in ``pairs``) trained with the same
    seed, so that a "-seed1" model starts beside its "-seed1" twin, the pair trained side by side."""
    chosen = next((l for l, (s, _) in pairs.items() if s == source), None)
    if chosen is None:
        return 0, 0

    def seed(label):
        return ((checkpoint_meta(pairs[label][0]) or {}).get("recipe") or {}).get("seed")

    wanted = seed(chosen)

    def pick(labels):
        if chosen in labels:
            return labels.index(chosen)
        return next((i for i, l in enumerate(labels) if wanted is not None and seed(l) == wanted), 0)

    return pick(baselines), pick(attentive)


def explain_missing_pair(pairs, baselines, attentive) -> bool:
    """Say on the page why a comparison cannot be shown; True when it cannot."""
    if baselines and attentive:
        return False
    st.info("This needs a baseline (AD = 0) and an attention checkpoint trained on the same classes; "
            f"available for these classes: {', '.join(pairs) or 'none'}.")
    return True


def add_uploaded_history(data: bytes, name: str) -> str:
    """Attach an uploaded training history to this session's uploaded checkpoint it belongs to:
    the one its file name pairs with (NAME.history.safetensors → NAME), else the selected upload.
    Returns that checkpoint's label; raises ValueError saying what is wrong."""
    from ar_core.history import load_history, mismatch

    history = load_history(data, name)
    uploads = st.session_state.get("user_checkpoints", {})
    stem = Path(name).name.removesuffix(".safetensors").removesuffix(".history")
    label = f"{stem} (uploaded)"
    if label not in uploads:
        label = st.session_state.get("model_label")
        if label not in uploads:
            raise ValueError(f"{name} is a training history; upload its checkpoint ({stem}.safetensors) as well: "
                             f"the history is attached to it then")
    why = mismatch(history, checkpoint_meta(UPLOAD_PREFIX + uploads[label]) or {})
    if why:
        raise ValueError(f"{name} is not the training history of {label}: {why}")
    st.session_state.setdefault("uploaded_histories", {})[uploads[label]] = data
    return label


def training_history(source: str):
    """(History, None) for a checkpoint with a training history (next to its file, or uploaded with
    it), else (None, why)."""
    from ar_core.history import history_path

    if source.startswith(UPLOAD_PREFIX):
        data = st.session_state.get("uploaded_histories", {}).get(source[len(UPLOAD_PREFIX):])
        if data is None:
            return None, ("No training history was uploaded with this checkpoint: add its NAME.history.safetensors, "
                          "which the trainer writes next to it, under *Use your own checkpoint* in the sidebar.")
        return _load_uploaded_history(hashlib.sha256(data).hexdigest(), data), None
    path = history_path(source)
    if not path.is_file():
        return None, ("This checkpoint has no training history: it was trained before histories were recorded, "
                      "or converted. `python -m ar_core.train` records one next to every checkpoint it writes.")
    try:
        return _load_history(str(path), path.stat().st_mtime), None
    except (ValueError, OSError) as e:
        return None, f"The training history next to this checkpoint cannot be read: {e}"


@st.cache_resource(max_entries=8)
def _load_uploaded_history(digest: str, _data: bytes):
    """Uploaded histories are cached by content digest (read once when attached, so they parse)."""
    from ar_core.history import load_history

    return load_history(_data, "uploaded history")


@st.cache_resource(max_entries=8)
def _load_history(path: str, mtime: float):
    from ar_core.history import load_history

    return load_history(path)


@st.cache_resource(max_entries=8)
def _probe_images(probes: tuple, split: str, dataset_key: str, _history, _dataset):
    from ar_core.history import probe_images as carve

    return carve(_history, _dataset)


def probe_images(history, dataset, dataset_key: str):
    """The history's probe images when ``dataset`` is the training folder (checked once per process).

    Cached by what decides them, the probes' positions and the recorded split, whichever checkpoint
    (a file or an upload) the history came with."""
    split = json.dumps(history.info.get("validation_split"), sort_keys=True)
    return _probe_images(tuple(history.probe_index), split, dataset_key, history, dataset)
