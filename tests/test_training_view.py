"""The "Over training" view: figure builders on a real trainer history, the probe images carved from
the training folder only, and the view in the inspector and on the data-set page (AppTest)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from app import figures
from app import figures_training as ft
from ar_core import data as D
from ar_core import train as T
from ar_core.gates import weight_bounds
from ar_core.history import history_path, load_history, probe_images
from conftest import DATASET_APP, ROOT, open_tab
from test_data import make_image_folder

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 3 epochs on a 3-class folder, with its history; (checkpoint, folder)."""
    tmp = tmp_path_factory.mktemp("hist")
    folder = tmp / "toy"
    make_image_folder(folder, classes=CLASSES, per_class=16)
    out = tmp / "ckpt" / "toy-ad3.safetensors"
    mp = pytest.MonkeyPatch()
    mp.setenv("AR_CACHE_DIR", str(tmp / "cache"))
    T.main(["--data", str(folder), "--depth", "10", "--width", "1", "--attention-width", "2", "--val-size", "6",
            "--batch-size", "8", "--threads", "1", "--no-progress", "--amp", "off", "--epochs", "3",
            "--out", str(out)])
    mp.undo()
    return out, folder


def test_probe_images_come_from_the_training_folder_only(trained, tmp_path):
    out, folder = trained
    h = load_history(history_path(out))
    full = D.load_image_folder(folder, use_cache=False)
    _, val_idx = D.stratified_split(full.labels, 6, 0)
    images = probe_images(h, full)
    assert torch.equal(images, full.images[val_idx][h.probe_index])
    other = D.TensorDataset(full.images.flip(3), full.labels, full.classes)  # same size, other pixels
    assert probe_images(h, other) is None
    assert probe_images(h, full.subset(torch.arange(10))) is None


def test_figures_plot_the_recorded_values(trained):
    h = load_history(history_path(trained[0]))
    fig = ft.accuracy_curves(h, epoch=2)
    assert [t.name for t in fig.data] == ["attention @ group1 alone", "attention @ group2 alone",
                                          "attention @ group3 alone", "network alone", "fused output"]
    for j, t in enumerate(fig.data):
        assert list(t.x) == h.epochs and np.allclose(t.y, 100 * h.val_accuracy[:, j].numpy())
    gates = ft.global_gate_curves(h, probe=1)
    assert np.allclose(gates.data[1].y, h.global_gates[:, 1, 0].numpy())  # group1, this image
    low, high = weight_bounds(len(h.sources))  # shaded: what softmax(tanh) cannot reach
    assert [(s.y0, s.y1) for s in gates.layout.shapes] == [(0, low), (high, 1)]
    leaning = ft.gate_lean_curves(h)
    assert [t.name for t in leaning.data] == ["global gate"] + [f"group{i} confidence gate" for i in (1, 2, 3)]
    for t, weights in zip(leaning.data, [h.global_gates, *h.confidence_gates.values()]):
        logw = weights.double().log()
        assert np.allclose(t.y, (100 * (logw.amax(2) - logw.amin(2)) / 2).mean(1).numpy())  # mean over probes
    belief = ft.probe_belief_curves(h, 0)
    assert np.allclose(belief.data[-1].y, h.true_class_prob[:, 0, -1].numpy())
    assert belief.layout.title.text.endswith(f"(true class = {h.classes[h.probe_labels[0]]})")
    summary = ft.probe_summary(h, 0, 2)  # epoch 2 is the second recorded
    assert summary["fused"] == h.classes[int(h.predictions[1, 0, -1])]
    assert summary["true"] == h.classes[h.probe_labels[0]]
    assert [l["name"] for l in summary["layers"]] == ["group1", "group2", "group3"]
    assert summary["layers"][0]["head_gates"] == pytest.approx(h.confidence_gates["group1"][1, 0].float().tolist())
    assert summary["layers"][2]["global_gate"] == pytest.approx(float(h.global_gates[1, 0, 2]))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    panels = ft.probe_panels(h, 0, 2, image=image, display_size=64)
    assert [len(row) for row in panels] == [2, 2, 2] and panels[1][1].shape == (64, 64, 3)
    base = np.asarray(Image.fromarray(image).resize((64, 64), Image.BICUBIC))
    want = figures.blend(base, figures.upsample(h.attention_maps["group2"][1, 0, 1], 64), 0.55, "jet")
    assert np.array_equal(panels[1][1], want)  # group2, head 2: its map over the image
    alone = ft.probe_panels(h, 0, 2, display_size=64)  # without the image: the colour-mapped map itself
    assert np.array_equal(alone[1][1], figures.blend(np.zeros((64, 64, 3)), figures.upsample(
        h.attention_maps["group2"][1, 0, 1], 64), 1.0, "jet"))


def _png(seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def env(trained, monkeypatch, tmp_path):
    out, folder = trained
    monkeypatch.setenv("AR_CHECKPOINT", str(out))
    monkeypatch.setenv("AR_IMAGE_FOLDER", str(folder))
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    return out


def _dataset_page():
    at = AppTest.from_string(DATASET_APP, default_timeout=120).run()
    at.selectbox(key="model_label").set_value("toy-ad3 (AR_CHECKPOINT)").run()
    return at


def test_dataset_page_steps_through_the_epochs_over_the_training_folder(env):
    at = _dataset_page()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    at.toggle(key="dataset_history").set_value(True).run()
    assert not at.exception and not at.error
    h = load_history(history_path(env))
    assert len(at.get("image")) == len(h.layers) * h.attention_maps["group1"].shape[2]  # one panel per head
    shown = [c for img in at.get("image") for c in img.proto.imgs]
    e = h.epochs.index(3)
    assert shown[0].caption == f"head 1 · g {h.confidence_gates['group1'][e, 0, 0]:.2f}"
    assert sorted(c.key for c in at.get("plotly_chart")) == [f"dataset_history_{k}" for k in
                                                             ("acc", "belief", "gates", "lean", "probe_gates")]
    assert not any("not stored with the model" in c.value for c in at.caption)  # the folder supplied them
    slider = at.select_slider(key="dataset_history_epoch")
    assert slider.value == 3
    slider.set_value(1).run()
    at.selectbox(key="dataset_history_probe").set_value(4).run()
    assert not at.exception and len(at.get("image")) == len(h.layers) * h.attention_maps["group1"].shape[2]
    e, shown = h.epochs.index(1), [c for img in at.get("image") for c in img.proto.imgs]
    assert shown[0].caption == f"head 1 · g {h.confidence_gates['group1'][e, 4, 0]:.2f}"  # probe 5 at epoch 1
    assert any(m.value.startswith(f"**Epoch 1**: fused answer **{h.classes[int(h.predictions[e, 4, -1])]}**")
               for m in at.markdown)


def test_inspector_shows_the_probes_without_the_folder_and_says_so(env):
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key="model_label").set_value("toy-ad3 (AR_CHECKPOINT)").run()
    at.file_uploader(key="images").set_value([("x.png", _png(), "image/png")]).run()
    assert "7 · Over training" in [t.label for t in at.tabs]
    open_tab(at, "7 · Over training")
    at.toggle(key="inspect_history_on").set_value(True).run()
    assert not at.exception and not at.error
    assert any("not stored with the model" in c.value for c in at.caption)
    assert len(at.selectbox(key="inspect_history_probe").options) == len(load_history(history_path(env)).probe_index)


def test_a_checkpoint_without_history_says_why(env, tmp_path, monkeypatch):
    import ar_core

    model, meta = ar_core.load_checkpoint(env)
    bare = ar_core.save_checkpoint(model, tmp_path / "bare.safetensors", {k: meta[k] for k in ("classes", "normalization")})
    monkeypatch.setenv("AR_CHECKPOINT", str(bare))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key="model_label").set_value("bare (AR_CHECKPOINT)").run()
    at.file_uploader(key="images").set_value([("x.png", _png(), "image/png")]).run()
    open_tab(at, "7 · Over training")
    at.toggle(key="inspect_history_on").set_value(True).run()
    assert not at.exception and any("has no training history" in i.value for i in at.info)


def _upload(at, key, path, name=None):
    return at.sidebar.file_uploader(key=key).set_value((name or path.name, path.read_bytes(),
                                                         "application/octet-stream")).run()


def test_an_uploaded_checkpoint_shows_the_history_uploaded_with_it(env, tmp_path, monkeypatch):
    monkeypatch.delenv("AR_CHECKPOINT")
    history = history_path(env)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    # before its checkpoint, under a name that pairs with none: said, kept, attached to the next upload
    _upload(at, "history_upload", history, "run.history.safetensors")
    assert not at.exception and any("upload its checkpoint (run.safetensors) as well" in e.value for e in at.error)
    _upload(at, "ckpt_upload", env)
    assert at.selectbox(key="model_label").value == "toy-ad3 (uploaded)"
    assert not at.error and any(s.value == "Training history attached to toy-ad3 (uploaded)." for s in at.success)
    import ar_core

    model, meta = ar_core.load_checkpoint(env)  # another file the history would pass for: same classes and layers
    other = ar_core.save_checkpoint(model, tmp_path / "other-seed.safetensors",
                                    {k: meta[k] for k in ("classes", "normalization")})
    _upload(at, "ckpt_upload", other)  # the history stays with toy-ad3, not the newcomer
    assert at.selectbox(key="model_label").value == "other-seed (uploaded)"
    assert len(at.session_state["uploaded_histories"]) == 1
    assert not any("attached to other-seed" in s.value for s in at.success)
    at.selectbox(key="model_label").set_value("toy-ad3 (uploaded)").run()
    at.file_uploader(key="images").set_value([("x.png", _png(), "image/png")]).run()
    open_tab(at, "7 · Over training")
    at.toggle(key="inspect_history_on").set_value(True).run()
    assert not at.exception and not at.error, [i.value for i in at.info]
    h = load_history(history)
    assert at.select_slider(key="inspect_history_epoch").options == [str(e) for e in h.epochs]
    shown = [c for img in at.get("image") for c in img.proto.imgs]
    assert f"head 1 · g {h.confidence_gates['group1'][-1, 0, 0]:.2f}" in [c.caption for c in shown]


def test_an_uploaded_history_that_is_not_the_checkpoints_is_refused(env, tmp_path, monkeypatch):
    import ar_core
    from ar_core.model import ModelConfig

    monkeypatch.delenv("AR_CHECKPOINT")
    model, meta = ar_core.load_checkpoint(env)
    baseline = ar_core.save_checkpoint(ar_core.build_model(ModelConfig(**{**meta["config"], "attention_depth": 0})),
                                       tmp_path / "base.safetensors", {k: meta[k] for k in ("classes", "normalization")})
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    _upload(at, "ckpt_upload", baseline)
    _upload(at, "history_upload", history_path(env))  # the attention model's: the selected upload is the baseline
    assert not at.exception
    assert [e.value for e in at.error] == ["toy-ad3.history.safetensors is not the training history of base "
                                           "(uploaded): it traced the sources group1, group2, group3, network; "
                                           "the checkpoint has network"]
    _upload(at, "history_upload", env, "base.history.safetensors")  # a checkpoint under a history's name
    assert any("base.history.safetensors is not a readable training history" in e.value for e in at.error)
    at.file_uploader(key="images").set_value([("x.png", _png(), "image/png")]).run()
    open_tab(at, "7 · Over training")
    at.toggle(key="inspect_history_on").set_value(True).run()
    assert not at.exception and any("No training history was uploaded" in i.value for i in at.info)


def test_model_card_names_the_training_images_by_digest(env):
    import ar_core

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key="model_label").set_value("toy-ad3 (AR_CHECKPOINT)").run()
    card = at.table[0].value
    digest = ar_core.load_checkpoint(env)[1]["validation_split"]["train_digest"]
    assert card.loc["training images (SHA-256 of their content)"].iloc[0] == digest[:16]
    assert not any("not saved" in label for label in card.index)  # trained without a moving average
