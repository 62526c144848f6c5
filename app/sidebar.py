"""Sidebar pickers shared by the pages: model and device, and a dataset to browse or analyse."""

from __future__ import annotations

import os

import streamlit as st

from app import state
from ar_core.card import architecture, card
from ar_core.checkpoint import CheckpointError
from ar_core.data import cache_dir, data_roots, is_loopback, resolve_under
from ar_core.evaluate import ClassMismatchError, align_labels, checkpoint_classes
from ar_core.tta import of_checkpoint
from ar_core.precision import device_options

DATASETS = ["CIFAR-10 test set", "CIFAR-100 test set", "ImageFolder directory"]


def _attach_checkpoint(data: bytes, name: str) -> str:
    label = state.add_uploaded_checkpoint(data, name)
    st.session_state["model_label"] = label  # switch to it
    if (st.session_state.get("history_note") or ("",))[0] == "error":
        st.session_state["history_seen"] = None  # a history refused for want of its checkpoint is tried again
    return f"Checkpoint {label} added."


def _attach_history(data: bytes, name: str) -> str:
    return f"Training history attached to {state.add_uploaded_history(data, name)}."


def _upload_once(up, kind: str, attach, error: type[Exception]):
    """Hand a new upload to ``attach`` once (not on every rerun) and keep showing what came of it."""
    if up is not None and st.session_state.get(f"{kind}_seen") != up.file_id:
        st.session_state[f"{kind}_seen"] = up.file_id
        try:
            st.session_state[f"{kind}_note"] = ("success", attach(up.getvalue(), up.name))
        except error as e:
            st.session_state[f"{kind}_note"] = ("error", str(e))
    if st.session_state.get(f"{kind}_note"):
        status, text = st.session_state[f"{kind}_note"]
        (st.success if status == "success" else st.error)(text)


def model_picker():
    """Model and device choice; returns (label, path, device) or None without any checkpoint."""
    with st.sidebar:
        st.header("Model")
        with st.expander("Use your own checkpoint"):
            _upload_once(st.file_uploader(
                "safetensors checkpoint", type=["safetensors"], key="ckpt_upload",
                help="Saved by ar_core.save_checkpoint, or converted from the reference implementation with "
                     "`python -m ar_core.convert`."), "ckpt", _attach_checkpoint, CheckpointError)
            _upload_once(st.file_uploader(
                "its training history (optional)", type=["safetensors"], key="history_upload",
                help="NAME.history.safetensors, which the trainer writes next to NAME.safetensors: the "
                     "inspector's *Over training* view shows it."), "history", _attach_history, ValueError)
        choices = state.model_choices()
        if not choices:
            st.warning("No checkpoint found. Train one with `python -m ar_core.train` (see README) or upload one.")
            return None
        label = st.selectbox("Checkpoint", list(choices), key="model_label")
        device = st.selectbox("Device", device_options(), key="device",
                              help="auto picks CUDA, then Apple MPS, then the CPU")
        trained = of_checkpoint(state.checkpoint_meta(choices[label]) or {}).name
        st.selectbox("Test-time augmentation", state.TTA_CHOICES, key="tta",
                     format_func=lambda c: f"as trained ({trained})" if c == state.TTA_CHOICES[0] else c,
                     help="flip: every number is the mean over the image and its mirror image (the mirror's "
                          "maps flipped back); shiftN adds the image moved by up to N pixels (maps moved back). "
                          "As trained: the views the checkpoint's validation figure was measured with, which the "
                          "evaluator uses too (over a whole data set at most flip, said where it applies). "
                          "Attributions explain the single, un-augmented pass.")
        return label, choices[label], device


def model_card(meta: dict):
    acc, aug = meta.get("val_accuracy"), of_checkpoint(meta)
    views = f" with {aug.name} test-time augmentation" if aug.views > 1 else ""
    st.caption(
        f"{meta.get('dataset', '?')} · {architecture(meta)}"
        + (f" · validation accuracy {acc:.2%}{views} (measured at the end of training)" if acc is not None else ""))
    with st.expander("Model card"):
        st.table(card(meta))
        if meta.get("recipe"):
            st.json(meta["recipe"], expanded=False)
        if meta.get("command"):
            st.code(meta["command"], language="bash")


def _open_dataset(kind: str, size: int):
    """The chosen dataset, or None with a message that says how to get one."""
    if kind == "ImageFolder directory":
        loopback = is_loopback(st.get_option("server.address"))
        roots = data_roots(loopback)
        default = os.environ.get(state.DATASET_ENV, "")
        # The server's own paths are shown to the operator only, never over the network: there, an empty
        # field stands for the operator's folder without printing where it lives.
        typed = st.text_input("Folder (root/<class>/<image>)", default if loopback else "", key="folder",
                              placeholder="" if loopback or not default else "empty: the folder this server offers",
                              help=f"Also settable with the {state.DATASET_ENV} environment variable.")
        path = typed or ("" if loopback else default)
        if loopback:
            st.caption("Readable folders: " + ", ".join(f"`{r}`" for r in roots))
        if not path:
            st.info("Enter the path of an ImageFolder directory: one sub-folder per class, images inside.")
            return None, None
        try:
            real = resolve_under(path, roots)
            signature = state.folder_signature(str(real))  # every result from the folder is keyed by it too
            return state.load_folder(str(real), size, signature), f"folder:{real}@{signature}"
        except PermissionError as e:
            st.error(f"Refused: {e}" if loopback else "Refused: this folder is not among those the operator "
                     "allowed this server to read (AR_DATA_ROOTS).")
        except (FileNotFoundError, OSError, ValueError) as e:
            st.error(f"Cannot read {path}: {e}" if loopback or typed else "Cannot read the folder this server "
                     "offers: ask its operator to check AR_IMAGE_FOLDER.")
        return None, None
    name = "cifar10" if kind.startswith("CIFAR-10 ") else "cifar100"
    root = str(cache_dir() / "torchvision")
    try:
        return state.load_cifar_test(name, root, False), f"{name}-test"
    except RuntimeError:
        st.info(f"The {kind} is not downloaded yet ({root}). It needs internet once (about 170 MB); "
                f"offline, pick an ImageFolder directory or upload images instead.")
        if st.button(f"Download {kind}", key="download_cifar"):
            try:
                with st.spinner("Downloading…"):
                    return state.load_cifar_test(name, root, True), f"{name}-test"
            except Exception as e:  # network errors come in many types
                st.error(f"Download failed ({type(e).__name__}: {e}). Are you offline? Uploads still work.")
        return None, None


def dataset_picker(size: int, meta: dict | None = None):
    """The dataset chosen in the sidebar → (TensorDataset, key) or (None, None) with a message.

    With the checkpoint's ``meta``, labels are renumbered to its classes by name, here and only here, so
    every verdict on every page compares predictions and labels in the same class order. The data may
    hold a subset of the classes.
    """
    with st.sidebar:
        st.header("Dataset")
        if "dataset_kind" not in st.session_state and os.environ.get(state.DATASET_ENV):
            st.session_state["dataset_kind"] = DATASETS[2]  # the operator's folder first
        kind = st.selectbox("Images from", DATASETS, key="dataset_kind")
        ds, key = _open_dataset(kind, size)
        if ds is None or meta is None:
            return ds, key
        try:
            return align_labels(ds, checkpoint_classes(meta, meta["config"]["num_classes"], ds), subset=True), key
        except ClassMismatchError as e:
            st.error(f"{e}. Pick a data set whose class folders are named as the model's classes.")
            return None, None


def chosen_model():
    """The model picked in the sidebar, loaded (cached) and described → (source, device, model, meta).

    None, with a message on the page, when there is no checkpoint or it cannot be loaded.
    """
    chosen = model_picker()
    if chosen is None:
        return None
    label, source, device = chosen
    try:
        model, meta = state.get_model(source, device)
    except (CheckpointError, OSError, RuntimeError) as e:
        st.error(f"Cannot load {label}: {e}")
        return None
    model_card(meta)
    return source, device, model, meta
