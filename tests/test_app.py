"""The Streamlit app, driven headlessly with AppTest on tiny checkpoints and a tiny ImageFolder."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import ar_core
from ar_core.inference import from_hwc
from conftest import DATASET_APP, ROOT, open_tab, randomize_bn

CLASSES = [f"class{i}" for i in range(4)]
META = {"classes": CLASSES, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "dataset": "toy",
        "image_size": 32, "val_accuracy": 0.5}


def _png(seed=0, size=(40, 50), mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def _checkpoint(path, ad=3, seed=0):
    torch.manual_seed(seed)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_depth=ad, attention_width=2)
    return ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), path, META)


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path / "tiny-ad3.safetensors")
    folder = tmp_path / "folder"
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for j in range(3):
            (folder / name / f"{j}.png").write_bytes(_png(10 * c + j, (32, 32)))
    monkeypatch.setenv("AR_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("AR_IMAGE_FOLDER", str(folder))
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    return tmp_path


def _start():
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    assert not at.exception
    return at


def _analysed_dataset_page():
    """The data-set page on the test checkpoint and folder, analysed without faithfulness curves."""
    at = AppTest.from_string(DATASET_APP, default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    at.number_input(key="faith_n").set_value(0)
    at.button(key="analyse_go").click().run()
    return at


def _errors(at):
    return [e.value for e in at.error]


def test_start_page_explains_what_to_do(app_env):
    at = _start()
    assert at.title[0].value == "Attend & Rectify Explorer"
    assert any("Upload an image" in i.value for i in at.info)
    assert any("AD=3, AW=2" in c.value for c in at.caption)


def test_upload_shows_every_view_and_downloads(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    assert not at.exception and not _errors(at)
    assert at.metric[0].label == "Prediction (fused)" and at.metric[0].value in CLASSES
    labels = [t.label for t in at.tabs]
    for view in ("1 · Prediction", "2 · Attention maps", "3 · Confidence gates", "4 · Global fusion",
                 "5 · Attributions", "6 · Baseline vs attention", "Export"):
        assert view in labels
    assert any("tab laid out in" in c.value for c in at.caption)
    # only the open tab is built; each one appears when opened
    assert len(at.get("plotly_chart")) == 1 and not at.get("download_button") and len(at.get("image")) == 1
    open_tab(at, "2 · Attention maps")
    assert len(at.get("image")) == 1 + 3 * 2 and len(at.get("plotly_chart")) == 1  # every head of every layer
    for label, charts in (("3 · Confidence gates", 1), ("4 · Global fusion", 2)):
        assert len(open_tab(at, label).get("plotly_chart")) >= charts and not at.exception
    assert len(open_tab(at, "Export").get("download_button")) == 3


def test_flip_tta_follows_the_checkpoint_and_can_be_switched(app_env):
    at = _start()
    assert at.selectbox(key="tta").value == "as trained"  # META has no test-time augmentation: single view
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    single = at.session_state["result"]["ins"].trace
    assert not single.views and not any("mirror image" in c.value for c in at.caption)
    at.selectbox(key="tta").set_value("flip").run()
    assert not at.exception and not _errors(at)
    flipped = at.session_state["result"]["ins"].trace
    assert len(flipped.views) == 2 and any("mirror image" in c.value for c in at.caption)
    torch.testing.assert_close(flipped.views[0].output, single.output)
    assert at.metric[0].value == CLASSES[int(flipped.output[0].argmax())]


def test_a_checkpoint_measured_with_shifts_is_inspected_with_them_and_says_when_a_data_set_pass_is_cheaper(
        tmp_path, monkeypatch):
    """'As trained' follows a flip-shift2 checkpoint on one image (18 views, said in the caption); over a
    whole data set it takes flip only, and the data-set page says so; choosing flip-shift2 lifts the cap."""
    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_depth=3, attention_width=2)
    ckpt = ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), tmp_path / "tiny-ad3.safetensors",
                                   {**META, "test_time_augmentation": "flip-shift2"})
    folder = tmp_path / "folder"
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        (folder / name / "0.png").write_bytes(_png(c, (32, 32)))
    monkeypatch.setenv("AR_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("AR_IMAGE_FOLDER", str(folder))
    at = _start()
    assert at.selectbox(key="tta").options[0] == "as trained (flip-shift2)"
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    trace = at.session_state["result"]["ins"].trace
    assert trace.augmentation == "flip-shift2" and len(trace.views) == 18
    assert any("flip-shift2 test-time augmentation: the mean over 18 views" in c.value for c in at.caption)
    assert any("flip in the sidebar's Test-time augmentation: 2 views, about 9x sooner" in c.value for c in at.caption)
    at.radio(key="source").set_value("Dataset").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    note = "The outcome filter judges every image with flip test-time augmentation"
    assert not any(note in c.value for c in at.caption)  # no filter, no pass over the folder
    at.selectbox(key="browse_outcome").set_value("correct").run()
    assert any(note in c.value and "own flip-shift2" in c.value for c in at.caption)
    at.selectbox(key="tta").set_value("flip-shift2").run()
    assert not any(note in c.value for c in at.caption)

    at = _analysed_dataset_page()
    assert not at.exception and not _errors(at)
    assert any("uses flip (2 views) to answer 9x sooner" in c.value for c in at.caption)
    assert at.session_state["analyses"] and all(k[-1] == "flip" for k in at.session_state["analyses"])
    at.selectbox(key="tta").set_value("flip-shift2").run()
    assert not any("answer 9x sooner" in c.value for c in at.caption)
    at.button(key="analyse_go").click().run()
    assert {k[-1] for k in at.session_state["analyses"]} == {"flip", "flip-shift2"}
    listed = "The data-set page listed this image as judged with"
    next(b for b in at.button if b.key and b.key.startswith("open_")).click().run()
    assert not at.exception and not any(listed in c.value for c in at.caption)  # listed as traced

    at = _analysed_dataset_page()  # lists judged with flip, the image traced with the checkpoint's own
    next(b for b in at.button if b.key and b.key.startswith("open_")).click().run()
    assert at.session_state["result"]["ins"].trace.augmentation == "flip-shift2"
    assert any(f"{listed} flip test-time augmentation; it is traced here with flip-shift2. Choose flip in the "
               f"sidebar's Test-time augmentation to see it as listed." in c.value for c in at.caption)
    opened = at.session_state["result"]["index"]
    at.number_input(key="browse_pos").set_value((opened + 1) % 4).run()  # another image: not the listed one
    assert at.session_state["result"]["index"] != opened and not any(listed in c.value for c in at.caption)


def test_bad_file_gives_an_error_and_keeps_the_previous_result(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    before = at.metric[0].value
    at.file_uploader(key="images").set_value([("notes.png", b"definitely not an image", "image/png")]).run()
    assert not at.exception
    assert any("not an image file" in e for e in _errors(at))
    assert at.metric[0].value == before  # the earlier result is still shown
    truncated = _png()[:60]
    at.file_uploader(key="images").set_value([("cut.png", truncated, "image/png")]).run()
    assert not at.exception and any("cut.png" in e for e in _errors(at))


def test_reruns_decode_only_the_picked_upload_and_only_once(app_env, monkeypatch):
    """A click that reruns the page must not decode every photo again (0.3 s per 12-megapixel JPEG): the
    other uploads have their headers checked, the picked one is decoded once per fit (the decoded photo, up
    to 40 megapixels, is not kept in the session)."""
    import app.pages.inspect_page as page
    from ar_core.inference import fit_image, load_image

    decoded = []
    monkeypatch.setattr(page, "load_image", lambda data, name="image": (decoded.append(name), load_image(data, name))[1])
    at = _start()
    files = [("a.png", _png(1)), ("b.png", _png(2)), ("c.png", _png(3))]
    at.file_uploader(key="images").set_value([(n, d, "image/png") for n, d in files]).run()
    assert decoded == ["a.png"]
    open_tab(at, "4 · Global fusion")
    at.run()
    assert decoded == ["a.png"]
    at.selectbox(key="pick").set_value(2).run()
    at.run()
    assert decoded == ["a.png", "c.png"]
    at.radio(key="fit").set_value("pad").run()
    at.run()
    assert not at.exception and decoded == ["a.png", "c.png", "c.png"]
    np.testing.assert_array_equal(at.session_state["result"]["image"],
                                  np.asarray(fit_image(load_image(files[2][1]), 32, "pad")))


def test_several_uploads_and_fit_modes(app_env):
    at = _start()
    files = [("a.png", _png(1), "image/png"), ("b.png", _png(2, mode="L"), "image/png")]
    at.file_uploader(key="images").set_value(files).run()
    assert at.selectbox(key="pick").options == ["a.png", "b.png"]
    at.selectbox(key="pick").set_value(1).run()
    from ar_core.inference import fit_image, load_image

    original = load_image(files[1][1])
    cropped = at.session_state["result"]["image"]
    np.testing.assert_array_equal(cropped, np.asarray(fit_image(original, 32, "center-crop")))
    at.radio(key="fit").set_value("pad").run()
    assert not at.exception and not _errors(at)
    padded = at.session_state["result"]["image"]
    np.testing.assert_array_equal(padded, np.asarray(fit_image(original, 32, "pad")))
    assert not np.array_equal(padded, cropped)
    # the model ran on the padded pixels: its output is that of the padded input
    model, meta = ar_core.load_checkpoint(app_env / "tiny-ad3.safetensors")
    want = ar_core.inference.inspect(model, ar_core.inference.from_hwc(padded), meta).trace.output
    torch.testing.assert_close(at.session_state["result"]["ins"].trace.output, want)


def test_display_controls_do_not_rerun_the_model(app_env, monkeypatch):
    at = _start()
    calls = []
    import ar_core.inference as inference

    original = inference.inspect
    monkeypatch.setattr(inference, "inspect", lambda *a, **k: calls.append(1) or original(*a, **k))
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    assert calls == [1]  # the model ran once for the new image
    open_tab(at, "2 · Attention maps")
    at.slider(key="alpha").set_value(0.2).run()
    at.selectbox(key="cmap").set_value("viridis").run()
    at.selectbox(key="hm_layer").set_value(2).run()
    at.selectbox(key="hm_head").set_value(1).run()
    open_tab(at, "4 · Global fusion")  # switching tabs reruns the page, not the model
    at.multiselect(key="contrib_classes").set_value([0, 1]).run()
    at.checkbox(key="src_group2").uncheck().run()
    assert not at.exception and calls == [1]
    at.file_uploader(key="images").set_value([("dog.png", _png(5), "image/png")]).run()
    assert calls == [1, 1]


def test_ablation_panel(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    open_tab(at, "4 · Global fusion")
    for name in ("group1", "group2", "group3"):
        at.checkbox(key=f"src_{name}").uncheck().run()
    text = " ".join(m.value for m in at.markdown)
    assert "Ablated prediction" in text
    # with only the network on, the ablated answer is the network's own
    trace = next(iter(at.session_state["traces"].values())).trace
    assert f"**{CLASSES[int(trace.net_output[0].argmax())]}**" in text
    at.checkbox(key="src_network").uncheck().run()
    assert any("at least one source" in w.value for w in at.warning)
    at.checkbox(key="src_network").check().run()
    at.checkbox(key="head_group1_0").uncheck().run()
    at.checkbox(key="head_group1_1").uncheck().run()
    assert any("keep at least one head" in w.value for w in at.warning)
    assert not at.exception


def test_attributions_run_on_request(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    open_tab(at, "5 · Attributions")
    assert any("Compute attributions" in i.value for i in at.info)
    at.multiselect(key="attr_methods").set_value(["saliency", "gradcam", "occlusion", "integrated_gradients"])
    at.selectbox(key="attr_layer").set_value("group2")
    at.checkbox(key="attr_nt").check()
    at.button(key="attr_go").click().run()
    assert not at.exception
    frames = at.dataframe
    assert frames, "agreement table missing"
    table = frames[-1].value
    assert set(table["method"]) == {"Saliency", "Grad-CAM", "Occlusion", "Integrated Gradients"}
    assert table["rank correlation"].between(-1, 1).all()
    at.button(key="faith_go").click().run()
    assert not at.exception
    areas = at.dataframe[-1].value
    assert "random" in set(areas["map"]) and "attention (all layers, gated)" in set(areas["map"])
    assert areas["deletion area (lower is better)"].between(0, 1).all()


def test_dataset_browser_filters(app_env):
    at = _start()
    at.radio(key="source").set_value("Dataset").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    assert not at.exception and not _errors(at)
    assert any("true label" in c.value for c in at.caption)
    at.selectbox(key="browse_class").set_value(2).run()
    assert any("true label: **class2**" in c.value for c in at.caption)
    # every outcome lists exactly the images whose predictions say so (re-computed here)
    model, meta = ar_core.load_checkpoint(app_env / "tiny-ad3.safetensors")
    ds = ar_core.data.load_image_folder(app_env / "folder")
    preds = ar_core.inference.predict_all(model, ds.images, meta)
    y = ds.labels.numpy()
    fused_ok, net_ok = preds["fused"] == y, preds["net"] == y
    want = {"correct": fused_ok, "wrong": ~fused_ok, "rectified": fused_ok & ~net_ok, "spoiled": ~fused_ok & net_ok,
            "all": np.ones(len(y), dtype=bool)}
    at.selectbox(key="browse_class").set_value(None).run()
    for outcome, mask in want.items():
        at.selectbox(key="browse_outcome").set_value(outcome).run()
        assert not at.exception
        if mask.sum():
            assert at.number_input(key="browse_pos").label == f"Image ({mask.sum()} match)", outcome
        else:
            assert any("No image matches" in i.value for i in at.info), outcome
    assert fused_ok.any() and (~fused_ok).any()  # both verdicts occur, so the counts can be wrong
    at.button(key="random_pick").click().run()
    assert not at.exception and at.metric


def test_a_folder_changed_while_the_app_runs_is_read_again(app_env):
    """Images added to the browsed folder: the browser lists them, and the outcome filter judges them
    (the images and the predictions were cached under the folder's path alone)."""
    import time

    at = _start()
    at.radio(key="source").set_value("Dataset").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    assert at.number_input(key="browse_pos").max == 11  # 12 images
    at.selectbox(key="browse_outcome").set_value("correct").run()  # predictions for the 12, cached
    for c, name in enumerate(CLASSES):
        (app_env / "folder" / name / "new.png").write_bytes(_png(100 + c, (32, 32)))
    time.sleep(6)  # the folder's signature is looked at every few seconds
    at.run()
    assert not at.exception and not _errors(at)
    model, meta = ar_core.load_checkpoint(app_env / "tiny-ad3.safetensors")
    ds = ar_core.data.load_image_folder(app_env / "folder")
    right = int((ar_core.inference.predict_all(model, ds.images, meta)["fused"] == ds.labels.numpy()).sum())
    assert len(ds) == 16 and at.number_input(key="browse_pos").label == f"Image ({right} match)"
    at.selectbox(key="browse_outcome").set_value("all").run()
    assert at.number_input(key="browse_pos").max == 15


def test_dataset_browser_without_data(app_env, monkeypatch):
    monkeypatch.delenv("AR_IMAGE_FOLDER")
    at = _start()
    at.radio(key="source").set_value("Dataset").run()
    assert any("not downloaded yet" in i.value and "upload" in i.value for i in at.info)
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    assert any("ImageFolder" in i.value for i in at.info)
    monkeypatch.setenv("HOME", str(app_env))
    at.text_input(key="folder").input(str(app_env / "no-such-folder")).run()
    assert not at.exception and any("Cannot read" in e for e in _errors(at))
    at.text_input(key="folder").input("/no/such/folder").run()  # outside the roots: refused, not probed
    assert not at.exception and any(e.startswith("Refused") for e in _errors(at))


def test_uploaded_checkpoints_and_baseline_comparison(app_env, monkeypatch):
    import pathlib

    writes = []
    original = pathlib.Path.write_bytes
    monkeypatch.setattr(pathlib.Path, "write_bytes", lambda self, data: writes.append(self) or original(self, data))
    at = _start()
    bad = app_env / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("bad.safetensors", bad.read_bytes(), "application/octet-stream")).run()
    assert not at.exception and any("not a readable safetensors" in e for e in _errors(at))
    base = _checkpoint(app_env / "tiny-base.safetensors", ad=0, seed=1)
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("tiny-base.safetensors", base.read_bytes(), "application/octet-stream")).run()
    assert "tiny-base (uploaded)" in at.selectbox(key="model_label").options
    assert not _errors(at) and [s.value for s in at.sidebar.success] == ["Checkpoint tiny-base (uploaded) added."]
    # the upload lives in the session's memory, not on disk
    assert list(at.session_state["uploaded_bytes"].values()) == [base.read_bytes()]
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    open_tab(at, "6 · Baseline vs attention")
    assert not at.exception
    assert at.selectbox(key="cmp_base").value == "tiny-base (uploaded)"
    assert any("→" in m.value for m in at.markdown)
    assert at.session_state["compare_maps"] == {}  # the maps wait for the button
    at.button(key="cmp_maps_go").click().run()
    assert not at.exception and not _errors(at)
    (key, (maps, _)), = at.session_state["compare_maps"].items()
    digest, fit, b_path, a_path, device = key[:5]
    uploaded = "upload:" + at.session_state["user_checkpoints"]["tiny-base (uploaded)"]
    assert (b_path, a_path) == (uploaded, str(app_env / "tiny-ad3.safetensors"))
    # the maps shown are those ar_core.attribution computes for each model and its own answer
    from ar_core.attribution import attribute, gated_attention
    from ar_core.inference import from_hwc, preprocess

    traces = {k[2]: ins.trace for k, ins in at.session_state["traces"].items() if k[1] == "cmp"}
    image = from_hwc(at.session_state["result"]["image"])
    for title, path, ckpt in (("baseline: Grad-CAM", b_path, base), ("attention: Grad-CAM", a_path, None)):
        model, meta = ar_core.load_checkpoint(ckpt or path)
        want = attribute(model, preprocess(image, meta), int(traces[path].output[0].argmax()), "gradcam").map
        np.testing.assert_allclose(maps[title], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps["attention: gated attention"], gated_attention(traces[a_path], 0, 32))
    assert any(c.value.startswith("Computed in") for c in at.caption)
    at.selectbox(key="model_label").set_value("tiny-base (uploaded)").run()
    open_tab(at, "2 · Attention maps")
    assert not at.exception
    assert any("baseline (AD = 0)" in i.value for i in at.info)
    assert [p for p in writes if p.suffix == ".safetensors"] == [app_env / "bad.safetensors"]  # the test's own


def test_about_page():
    at = AppTest.from_string("from app.pages import about\nabout.render()", default_timeout=30).run()
    assert not at.exception
    assert len(at.latex) == 7  # the six equations of the method, and test-time augmentation
    assert "Test-time augmentation" in [h.value for h in at.subheader]


def test_folders_outside_the_data_roots_are_refused(app_env, monkeypatch):
    monkeypatch.setenv("AR_DATA_ROOTS", str(app_env / "folder"))
    secret = app_env / "secret" / "cls"
    secret.mkdir(parents=True)
    (secret / "a.png").write_bytes(_png())
    at = _start()
    at.radio(key="source").set_value("Dataset").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    assert any(str(app_env / "folder") in c.value for c in at.sidebar.caption)
    for bad in (str(app_env / "secret"), f"{app_env}/folder/../secret"):
        at.text_input(key="folder").input(bad).run()
        assert not at.exception and any(e.startswith("Refused") for e in _errors(at)), bad


def test_dataset_page_analyses_and_opens_an_image(app_env):
    at = AppTest.from_string(DATASET_APP, default_timeout=120).run()
    assert not at.exception
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    assert any("Analyse the data set" in i.value for i in at.info)
    at.number_input(key="faith_n").set_value(2)
    at.multiselect(key="faith_methods").set_value(["attention", "random"])
    at.button(key="analyse_go").click().run()
    assert not at.exception and not _errors(at)
    labels = [m.label for m in at.metric]
    assert labels[:4] == ["Accuracy (fused)", "Network alone", "Top-5", "ECE"]
    table = next(d.value for d in at.dataframe if "map" in d.value.columns)
    assert set(table["map"]) == {"attention", "random"}
    at.selectbox(key="src_pick").set_value("group1").run()
    at.radio(key="src_right").set_value("right").run()
    at.selectbox(key="dom_pick").set_value("network").run()
    assert not at.exception
    at.radio(key="cm_which").set_value("network alone").run()
    at.selectbox(key="an_layer").set_value("group2").run()
    assert not at.exception
    (_, arrays), = at.session_state["analyses"].values()
    at.selectbox(key="cm_true").set_value(0).run()  # image 0 is of class 0
    at.selectbox(key="cm_pred").set_value(int(arrays["net_pred"][0])).run()
    buttons = [b for b in at.button if b.key and b.key.startswith("open_")]
    assert buttons, "no image listed for the chosen confusion cell"
    buttons[0].click().run()
    assert not at.exception
    assert at.session_state["source"] == "Dataset"


def _listed(at, title: str) -> set[int]:
    """The image indices a data-set page list titled ``title`` offers to open (its "Inspect" buttons)."""
    prefix = f"open_{title}_"
    return {int(b.key[len(prefix):]) for b in at.button if b.key and b.key.startswith(prefix)}


def test_dataset_page_lists_hold_exactly_the_images_they_name(app_env):
    """Each list (a source right or wrong, a dominant source, a class's rectified and spoiled images)
    offers exactly the images whose per-image results say so, counted here from a float32 trace."""
    at = _analysed_dataset_page()
    model, meta = ar_core.load_checkpoint(app_env / "tiny-ad3.safetensors")
    ds = ar_core.data.load_image_folder(app_env / "folder")
    with torch.no_grad():
        t = model.trace(ar_core.inference.preprocess(ds.images, meta), flip=True)
    y = ds.labels.numpy()
    (_, arrays), = at.session_state["analyses"].values()
    assert (arrays["pred"] == t.output.argmax(1).numpy()).mean() >= 0.9  # bf16 may flip a near tie, no more
    for src, right in (("group1", "right"), ("group2", "wrong"), ("network", "right")):
        at.selectbox(key="src_pick").set_value(src).run()
        at.radio(key="src_right").set_value(right).run()
        pred = arrays["net_pred"] if src == "network" else arrays[f"pred/{src}"]
        assert _listed(at, f"{src} {right}") == set(np.nonzero((pred == y) == (right == "right"))[0]), (src, right)
    assert (arrays["dominant"] == t.global_gates.argmax(1).numpy()).mean() >= 0.9
    for j, src in enumerate(t.sources):
        at.selectbox(key="dom_pick").set_value(src).run()
        assert _listed(at, f"{src} dominant") == set(np.nonzero(arrays["dominant"] == j)[0]), src
    rows = [r for r in at.dataframe if "rectified" in r.value.columns]
    assert rows, "no per-class rectification table"
    masks = {"rectified": (arrays["pred"] == y) & (arrays["net_pred"] != y),
             "spoiled": (arrays["pred"] != y) & (arrays["net_pred"] == y)}
    changed = [int(((masks["rectified"] | masks["spoiled"]) & (y == k)).sum()) for k in range(4)]
    c = int(np.argmax(changed))
    assert changed[c], "no class has a rectified or spoiled image: the lists below would be empty either way"
    at.session_state["rect_table"] = {"selection": {"rows": [c], "columns": []}}  # click the class's row
    at.run()
    for outcome, mask in masks.items():
        assert _listed(at, f"{outcome} {CLASSES[c]}") == set(np.nonzero(mask & (y == c))[0]), outcome


def test_dataset_page_lists_where_baseline_and_attention_disagree(app_env):
    from ar_core.data import load_image_folder
    from ar_core.inference import predict_all

    at = AppTest.from_string(DATASET_APP, default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    base = _checkpoint(app_env / "tiny-base.safetensors", ad=0, seed=1)
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("tiny-base.safetensors", base.read_bytes(),
                                                            "application/octet-stream")).run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    at.number_input(key="faith_n").set_value(0)
    at.button(key="analyse_go").click().run()
    assert not at.exception and not _errors(at)
    assert at.selectbox(key="ds_cmp_base").value == "tiny-base (uploaded)"
    assert at.selectbox(key="ds_cmp_att").value == "tiny-ad3 (AR_CHECKPOINT)"  # the chosen checkpoint
    assert not any(btn.key.startswith("open_only") for btn in at.button if btn.key)  # nothing runs before the toggle
    at.toggle(key="ds_cmp_on").set_value(True).run()
    assert not at.exception and not _errors(at)
    # recomputed from the two models' own predictions over the folder
    ds = load_image_folder(str(app_env / "folder"), 32)
    y = ds.labels.numpy()
    b, a = (predict_all(ar_core.load_checkpoint(p)[0], ds.images, META, tta="none")["fused"]
            for p in (base, app_env / "tiny-ad3.safetensors"))
    want = {"only the attention model right": [i for i in range(len(y)) if a[i] == y[i] != b[i]],
            "only the baseline right": [i for i in range(len(y)) if b[i] == y[i] != a[i]],
            "both wrong, different answers": [i for i in range(len(y)) if y[i] != a[i] != b[i] != y[i]]}
    assert sum(map(len, want.values())) > 0, "the two tiny models should disagree somewhere"
    from ar_core.compare import mcnemar_exact

    only_a, only_b = len(want["only the attention model right"]), len(want["only the baseline right"])
    assert any(f"Only the attention model is right on {only_a}, only the baseline on {only_b}: McNemar's exact "
               f"p = {mcnemar_exact(only_a, only_b):.3g}" in m.value for m in at.markdown)
    # both answered single view, as the command-line comparison does only when told to
    assert any("`python -m ar_core.compare --tta none --amp off` on the same folder gives the same" in m.value
               for m in at.markdown)
    for title, indices in want.items():
        keys = [btn.key for btn in at.button if btn.key and btn.key.startswith(f"open_{title}_")]
        shown = [int(k.rsplit("_", 1)[1]) for k in keys]
        assert shown == indices[:24], title
        assert any(m.value.startswith(f"**{title}** — {len(indices)} images") for m in at.markdown), title
    first = next(i for v in want.values() for i in v)
    captions = [c for el in at.image for c in el.captions]
    assert f"#{first} {CLASSES[y[first]]} · B {CLASSES[b[first]]} · A {CLASSES[a[first]]}" in captions
    title = next(t for t, v in want.items() if v)
    at.button(key=f"open_{title}_{want[title][0]}").click().run()
    assert not at.exception and at.session_state["source"] == "Dataset"


def test_perturbation_lab(app_env):
    at = AppTest.from_string(
        "import streamlit as st\n"
        "from app.pages import inspect_page, lab_page\n"
        "page = st.session_state.get('page', 'inspect')\n"
        "(inspect_page if page == 'inspect' else lab_page).render()\n", default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    before = at.metric[0].value
    at.session_state["page"] = "lab"
    at.run()
    assert not at.exception and at.metric[0].label == "Attention model"
    calls = len(at.session_state["traces"])
    for key, value in (("lab_osize", 12), ("lab_scale", 0.5), ("lab_noise", 0.1), ("lab_brightness", 0.2),
                       ("lab_contrast", 1.5), ("lab_dx", 3)):
        at.slider(key=key).set_value(value).run()
        assert not at.exception, key
    at.checkbox(key="lab_occlude").check().run()
    assert not at.exception
    assert len(at.session_state["traces"]) > calls  # each new perturbation was traced
    assert "was " + before in at.metric[0].delta
    # what is shown is the model's answer on the image perturbed as the controls say, re-done here
    from ar_core import perturb as P
    from ar_core.inference import from_hwc, image_digest, preprocess
    from ar_core.tta import of_checkpoint

    ss = at.session_state
    x = P.apply(from_hwc(ss["result"]["image"])[0],
                P.Perturbation(occlusion=(ss["lab_ox"], ss["lab_oy"], 12), shift=(3, 0), clutter_scale=0.5, noise=0.1,
                               brightness=0.2, contrast=1.5))  # no data set browsed: the image's own tiles
    assert any(k[0] == f"lab-{image_digest(x)}" for k in ss["traces"])
    model, meta = ar_core.load_checkpoint(app_env / "tiny-ad3.safetensors")
    aug = of_checkpoint(meta)
    with torch.no_grad():
        out = model.trace(preprocess(x[None], meta), flip=aug.flip, shift=aug.shift).output[0]
    assert at.metric[0].value == CLASSES[int(out.argmax())]
    assert any("No baseline" in i.value for i in at.info)
    # a baseline inspected in the lab is called one, and set beside an attention model, not beside itself
    base = _checkpoint(app_env / "tiny-base.safetensors", ad=0, seed=1)
    at.session_state["page"] = "inspect"
    at.run()
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("tiny-base.safetensors", base.read_bytes(),
                                                           "application/octet-stream")).run()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    at.session_state["page"] = "lab"
    at.run()
    assert not at.exception and [m.label for m in at.metric] == ["This model (a baseline, AD = 0)",
                                                                 "Attention model (tiny-ad3 (AR_CHECKPOINT))"]


def test_default_model_is_the_shipped_cifar10_attention_checkpoint(monkeypatch):
    monkeypatch.delenv("AR_CHECKPOINT", raising=False)  # a missing shipped file fails here, as in test_shipped
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert at.selectbox(key="model_label").value == "cifar10-wrn16x4-ad3aw4 (shipped)"
    meta = ar_core.load_checkpoint("cifar10-wrn16x4-ad3aw4")[1]
    want = (f"cifar10 · WRN-16-4, AD=3, AW=4, 1x1 heads · validation accuracy {meta['val_accuracy']:.2%} with "
            f"{meta['test_time_augmentation']} test-time augmentation")
    assert any(c.value.startswith(want) for c in at.caption), want


@pytest.mark.parametrize("dataset, seed", [("cifar10", ""), ("cifar100", ""), ("cifar10", "-seed1")])
def test_shipped_pair_compares_side_by_side_with_the_recipes_augmentation(monkeypatch, dataset, seed):
    """View 6 on a shipped pair: the baseline and the attention model of one dataset, each with the test-time
    augmentation its card records; a seed-1 attention model starts beside the seed-1 baseline."""
    monkeypatch.delenv("AR_CHECKPOINT", raising=False)
    names = (f"{dataset}-wrn16x4-baseline{seed}", f"{dataset}-wrn16x4-ad3aw4{seed}")
    assert set(names) <= set(ar_core.available_checkpoints())
    base_aug, att_aug = (ar_core.tta.of_checkpoint(ar_core.load_checkpoint(n)[1]) for n in names)
    assert att_aug.flip and base_aug.flip  # every shipped recipe mirrors at least
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key="model_label").set_value(f"{names[1]} (shipped)").run()
    assert at.selectbox(key="tta").options[0] == f"as trained ({att_aug.name})"
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    open_tab(at, "6 · Baseline vs attention")
    assert not at.exception and not _errors(at)
    assert at.selectbox(key="cmp_base").value == f"{names[0]} (shipped)"
    assert at.selectbox(key="cmp_att").value == f"{names[1]} (shipped)"
    traces = [ins.trace for key, ins in at.session_state["traces"].items() if key[1] == "cmp"]
    assert len(traces) == 2 and sorted(len(t.layers) for t in traces) == [0, 3]
    assert [len(t.views) for t in sorted(traces, key=lambda t: len(t.layers))] == [base_aug.views, att_aug.views]
    shown = [m.value for m in at.markdown if "→" in m.value]
    assert len(shown) == 2 and all(c in " ".join(shown) for c in names)
    at.button(key="cmp_maps_go").click().run()
    assert not at.exception and not _errors(at)
    (key, (maps, _)), = at.session_state["compare_maps"].items()
    assert key[-2:] == (base_aug.name, att_aug.name)  # keyed by each checkpoint's test-time augmentation
    assert all(ar_core.load_checkpoint(n)[1]["weights_sha256"] in key for n in names)  # and by its weights
    from ar_core.attribution import gated_attention

    att = next(t for t in traces if t.layers)
    np.testing.assert_allclose(maps["attention: gated attention"], gated_attention(att, 0, 32))
    assert maps["baseline: Grad-CAM"].shape == maps["attention: Grad-CAM"].shape == (32, 32)
    assert not np.allclose(maps["baseline: Grad-CAM"], maps["attention: Grad-CAM"])


def test_a_shipped_baseline_starts_beside_the_attention_model_of_its_own_seed(monkeypatch):
    monkeypatch.delenv("AR_CHECKPOINT", raising=False)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key="model_label").set_value("cifar10-wrn16x4-baseline-seed1 (shipped)").run()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    open_tab(at, "6 · Baseline vs attention")
    assert not at.exception and not _errors(at)
    assert at.selectbox(key="cmp_base").value == "cifar10-wrn16x4-baseline-seed1 (shipped)"
    assert at.selectbox(key="cmp_att").value == "cifar10-wrn16x4-ad3aw4-seed1 (shipped)"  # not seed 0's, listed first


def test_sessions_leave_no_hooks_captum_objects_or_figures(app_env):
    """Several sessions that attribute, ablate and draw: afterwards the process holds none of it."""
    import gc

    import matplotlib.pyplot as plt

    for seed in range(3):
        at = _start()
        at.file_uploader(key="images").set_value([(f"img{seed}.png", _png(seed), "image/png")]).run()
        open_tab(at, "5 · Attributions")
        at.multiselect(key="attr_methods").set_value(["saliency", "gradcam", "occlusion", "integrated_gradients"])
        at.button(key="attr_go").click().run()
        at.button(key="faith_go").click().run()
        open_tab(at, "4 · Global fusion")
        at.checkbox(key="src_group1").uncheck().run()
        assert not at.exception and not _errors(at)
        del at
    gc.collect()
    alive = gc.get_objects()
    modules = [o for o in alive if isinstance(o, torch.nn.Module)]
    assert modules, "the cached model should still be alive"
    hooked = [type(m).__name__ for m in modules
              if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks]
    assert not hooked
    from captum.attr import Attribution

    assert not [type(o).__name__ for o in alive if isinstance(o, Attribution)]
    assert plt.get_fignums() == []


def test_python_memory_levels_off_over_many_sessions(app_env):
    """Forty sessions, each uploading its own image: after the first few, traced memory stays flat.

    A per-session leak of the upload (about 120 KB here) or its arrays would add megabytes of
    traced memory between the two samples; a leaked trace would add live tensors.
    """
    import gc
    import tracemalloc

    samples = {}
    tracemalloc.start()
    try:
        for i in range(1, 41):
            at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
            at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
            at.file_uploader(key="images").set_value([(f"img{i}.png", _png(i, (200, 200)), "image/png")]).run()
            assert not at.exception and not _errors(at)
            del at
            if i in (15, 40):
                gc.collect()
                tensors = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))  # not traced below
                samples[i] = (tracemalloc.get_traced_memory()[0] / 2**20, tensors)
    finally:
        tracemalloc.stop()
    assert samples[40][0] - samples[15][0] < 1.0, samples
    assert samples[40][1] <= samples[15][1], samples


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
def test_home_folder_and_root_paths_only_on_loopback(app_env, monkeypatch, address):
    """Without AR_DATA_ROOTS, a server others can reach reads only AR_IMAGE_FOLDER and shows no paths."""
    from streamlit import config

    monkeypatch.delenv("AR_DATA_ROOTS", raising=False)
    monkeypatch.setenv("HOME", str(app_env))
    private = app_env / "private" / "cls"
    private.mkdir(parents=True)
    (private / "a.png").write_bytes(_png())
    before = config.get_option("server.address")
    config.set_option("server.address", address)
    try:
        at = _start()
        at.radio(key="source").set_value("Dataset").run()
        at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
        assert not at.exception and not _errors(at)  # AR_IMAGE_FOLDER is readable either way
        shown = " ".join(c.value for c in at.sidebar.caption) + at.text_input(key="folder").value
        browsable = any("true label" in c.value for c in at.caption)
        named = at.session_state["result"]["name"]  # on screen and in exports
        at.text_input(key="folder").input(str(app_env / "private")).run()
        refused = [e for e in _errors(at) if e.startswith("Refused")]
    finally:
        config.set_option("server.address", before)
    assert browsable  # the operator's folder is offered on either address
    assert named == "folder:folder#0"  # the folder's own name: never its path on the server
    if address == "127.0.0.1":
        assert str(app_env) in shown and not refused
    else:
        assert str(app_env) not in shown and refused and str(app_env) not in refused[0]


def test_results_follow_the_image_content_not_its_file_name(app_env):
    """Two different photos uploaded under one name: attributions, faithfulness curves and the
    baseline comparison of the first are never shown for the second."""
    at = _start()
    base = _checkpoint(app_env / "tiny-base.safetensors", ad=0, seed=1)
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("tiny-base.safetensors", base.read_bytes(),
                                                           "application/octet-stream")).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    shown = []
    for seed in (1, 2):
        at.file_uploader(key="images").set_value([("same-name.png", _png(seed), "image/png")]).run()
        open_tab(at, "5 · Attributions")
        assert any("Compute attributions" in i.value for i in at.info), f"upload {seed}: stale attributions"
        at.multiselect(key="attr_methods").set_value(["saliency"])
        at.button(key="attr_go").click().run()
        assert any("Compute deletion and insertion curves" in b.label for b in at.button), f"upload {seed}: stale curves"
        at.button(key="faith_go").click().run()
        assert not at.exception and not _errors(at)
        areas = [d.value for d in at.dataframe if "deletion area (lower is better)" in d.value]
        shown.append(areas[0]["deletion area (lower is better)"].tolist())
        open_tab(at, "6 · Baseline vs attention")
    assert shown[0] != shown[1]
    compared = [key for key in at.session_state["traces"] if key[1] == "cmp"]
    assert len(compared) == 4  # baseline and attention model, for each of the two images
    # switching the fit of the same file is another model input: its own trace
    open_tab(at, "5 · Attributions")
    at.radio(key="fit").set_value("pad").run()
    assert any("Compute attributions" in i.value for i in at.info)


def test_a_checkpoint_replaced_under_its_name_is_traced_and_explained_again(app_env):
    """Checkpoints are replaced in place (a new release pulled into a running server): the next rerun loads
    the new weights, and no trace or attribution of the old ones is shown for them."""
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(1), "image/png")]).run()
    old = at.session_state["result"]["ins"].trace.output.clone()
    open_tab(at, "5 · Attributions")
    at.multiselect(key="attr_methods").set_value(["saliency"])
    at.button(key="attr_go").click().run()
    assert not any("Compute attributions" in i.value for i in at.info)
    ckpt = app_env / "tiny-ad3.safetensors"
    stamp = ckpt.stat().st_mtime + 10  # a later modification time, whatever the file system's resolution
    _checkpoint(ckpt, seed=7)
    os.utime(ckpt, (stamp, stamp))
    at.run()
    assert not at.exception and not _errors(at)
    model, meta = ar_core.load_checkpoint(ckpt)
    res = at.session_state["result"]
    with torch.no_grad():
        want = model(ar_core.inference.preprocess(from_hwc(res["image"]), meta))
    shown = res["ins"].trace.output
    assert not torch.allclose(shown, old) and torch.allclose(shown, want, atol=1e-4)  # the new model's answer
    assert res["weights"] == meta["weights_sha256"]
    assert any("Compute attributions" in i.value for i in at.info)  # the old weights' saliency is not shown
    # With no image chosen any more the last result stays on screen: it too follows the replaced file.
    at.file_uploader(key="images").set_value([]).run()
    stamp += 10
    _checkpoint(ckpt, seed=8)
    os.utime(ckpt, (stamp, stamp))
    at.run()
    model, meta = ar_core.load_checkpoint(ckpt)
    res = at.session_state["result"]
    with torch.no_grad():
        want = model(ar_core.inference.preprocess(from_hwc(res["image"]), meta))
    assert not at.exception and res["weights"] == meta["weights_sha256"]
    assert torch.allclose(res["ins"].trace.output, want, atol=1e-4)
    # A broken file under the name: the sidebar says so; with a model of other classes chosen, the last result
    # (of the broken file) is dropped with a message instead of failing in a view. The app keeps running.
    ckpt.write_bytes(b"not a checkpoint")
    os.utime(ckpt, (stamp + 10, stamp + 10))
    at.run()
    assert not at.exception and any("is not a readable safetensors file" in e for e in _errors(at))
    at.selectbox(key="model_label").set_value("cifar10-wrn16x4-ad3aw4 (shipped)").run()
    assert not at.exception and "result" not in at.session_state
    assert any("was traced by a model of other classes" in i.value for i in at.info)


def test_the_last_result_follows_the_sidebars_model_when_no_image_is_at_hand(app_env):
    """Clearing the uploads keeps the last result on screen; choosing another checkpoint or device then must not
    leave the old model's answers beside the new model's card."""
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(1), "image/png")]).run()
    at.file_uploader(key="images").set_value([]).run()
    other = _checkpoint(app_env / "tiny-other.safetensors", seed=5)  # same classes and size, other weights
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("tiny-other.safetensors", other.read_bytes(),
                                                           "application/octet-stream")).run()
    assert at.selectbox(key="model_label").value == "tiny-other (uploaded)"
    model, meta = ar_core.load_checkpoint(other)
    res = at.session_state["result"]
    assert res["path"].startswith("upload:") and res["weights"] == meta["weights_sha256"]
    with torch.no_grad():
        want = model(ar_core.inference.preprocess(from_hwc(res["image"]), meta))
    assert torch.allclose(res["ins"].trace.output, want, atol=1e-4)  # the chosen model's answer
    assert at.metric[0].value == res["ins"].classes[int(want.argmax())]
    at.selectbox(key="tta").set_value("none").run()
    assert not at.exception and at.session_state["result"]["tta"] == "none"
    at.selectbox(key="model_label").set_value("cifar10-wrn16x4-ad3aw4 (shipped)").run()  # other classes
    assert not at.exception and "result" not in at.session_state and not at.metric
    assert any("pick an image for this one" in i.value for i in at.info)


def test_dataset_predictions_are_kept_per_weights(app_env):
    """The process-wide store of data-set predictions tells two versions of one checkpoint apart."""
    def page():
        import os

        import ar_core
        from app import state
        from ar_core.data import load_image_folder

        model, meta = ar_core.load_checkpoint(os.environ["AR_CHECKPOINT"])
        ds = load_image_folder(os.environ["AR_IMAGE_FOLDER"])
        for weights in ("old-weights", "new-weights"):
            state.dataset_predictions(model, {**meta, "weights_sha256": weights}, ds, ("folder:per-weights",))

    assert not AppTest.from_function(page, default_timeout=60).run().exception
    from app import state

    kept = [key for key in state._prediction_store()[0] if key[0] == "folder:per-weights"]
    assert sorted(key[-1] for key in kept) == ["new-weights", "old-weights"]


def test_the_process_keeps_the_most_recently_used_dataset_predictions(app_env, monkeypatch):
    """A server that runs for weeks sees folders change: the store keeps PREDICTION_SETS sets, dropping the one
    used longest ago, and a set asked for again is served, not predicted again."""
    from app import state

    monkeypatch.setattr(state, "PREDICTION_SETS", 2)

    def page():
        import os

        import ar_core
        import streamlit as st
        from app import state
        from ar_core.data import load_image_folder

        model, meta = ar_core.load_checkpoint(os.environ["AR_CHECKPOINT"])
        ds = load_image_folder(os.environ["AR_IMAGE_FOLDER"])
        sets = {}
        for name in ("a", "b", "a", "c"):  # c pushes out b, the least recently used
            sets.setdefault(name, []).append(state.dataset_predictions(model, meta, ds, (f"folder:lru-{name}",)))
        st.session_state["same_a"] = sets["a"][0] is sets["a"][1]

    state._prediction_store()[0].clear()
    at = AppTest.from_function(page, default_timeout=60).run()
    assert not at.exception and at.session_state["same_a"]
    assert [key[0] for key in state._prediction_store()[0]] == ["folder:lru-a", "folder:lru-c"]


def test_sanity_check_and_walk_follow_the_image_content_not_its_file_name(app_env):
    """A second photo under the first one's name starts its own sanity check and its own walk."""
    at = _start()
    for seed in (1, 2):
        at.file_uploader(key="images").set_value([("camera.jpg", _png(seed), "image/png")]).run()
        open_tab(at, "Sanity check")
        assert any("Run the sanity check" in i.value for i in at.info), f"upload {seed}: stale sanity check"
        at.multiselect(key="sanity_methods").set_value(["attention"])
        at.button(key="sanity_go").click().run()
        assert not at.exception and not any("Run the sanity check" in i.value for i in at.info)
        open_tab(at, "Walk me through")
        assert [b.key for b in at.button if b.key == "walk_start"], f"upload {seed}: the walk went on"
        at.button(key="walk_start").click().run()
        at.button(key="walk_next").click().run()
        assert not at.exception and "Step 2 of" in at.get("progress")[0].proto.text
    assert len(at.session_state["sanity"]) == 2


def test_faithfulness_curves_follow_the_maps_they_rank(app_env):
    """Another Grad-CAM layer or NoiseTunnel makes other maps: their curves are computed again."""
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    open_tab(at, "5 · Attributions")
    at.multiselect(key="attr_methods").set_value(["gradcam"])
    at.selectbox(key="attr_layer").set_value("group2")
    at.button(key="attr_go").click().run()
    at.button(key="faith_go").click().run()
    assert not at.exception and any("deletion area (lower is better)" in d.value for d in at.dataframe)
    for change in (lambda: at.selectbox(key="attr_layer").set_value("group1"),
                   lambda: at.checkbox(key="attr_nt").check()):
        change()
        at.button(key="attr_go").click().run()
        assert any(b.key == "faith_go" for b in at.button), "curves of other maps shown"
        at.button(key="faith_go").click().run()
    assert len(at.session_state["faith_curves"]) == 3


@pytest.fixture
def subset_folder(app_env, monkeypatch):
    """A folder with two of the model's four classes, class3 and class1: folder order gives them
    labels 0 and 1, the checkpoint's order 3 and 1."""
    folder = app_env / "subset"
    for name in ("class3", "class1"):
        (folder / name).mkdir(parents=True)
        for j in range(3):
            (folder / name / f"{j}.png").write_bytes(_png(100 + j + 7 * len(name), (32, 32)))
    monkeypatch.setenv("AR_IMAGE_FOLDER", str(folder))
    return folder


def test_browser_labels_a_subset_folder_by_class_name(app_env, subset_folder):
    at = _start()
    at.radio(key="source").set_value("Dataset").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    assert not at.exception and not any("do not match" in e for e in _errors(at))
    assert at.selectbox(key="browse_class").options == ["all classes", "class1", "class3"]
    at.selectbox(key="browse_class").set_value(3).run()
    assert any("true label: **class3**" in c.value for c in at.caption)
    assert at.session_state["result"]["label"] == 3  # the checkpoint's index of class3, as predictions use
    # outcome filters judge predictions against labels in the same order
    from ar_core.inference import predict_all

    model, meta = ar_core.load_checkpoint(app_env / "tiny-ad3.safetensors")
    ds = ar_core.data.load_image_folder(subset_folder)
    preds = predict_all(model, ds.images, meta, tta="none")["fused"]
    truth = np.array([CLASSES.index(ds.classes[y]) for y in ds.labels.tolist()])
    at.selectbox(key="browse_class").set_value(None).run()
    at.selectbox(key="browse_outcome").set_value("correct").run()
    right = int((preds == truth).sum())
    if right:
        assert at.number_input(key="browse_pos").label == f"Image ({right} match)"
    else:
        assert any("No image matches" in i.value for i in at.info)


def test_dataset_page_analyses_a_subset_folder(subset_folder):
    at = _analysed_dataset_page()
    assert not at.exception and not _errors(at)
    (r, _), = at.session_state["analyses"].values()
    assert r["n"] == 6 and r["per_class_accuracy"]["class0"] is None and r["per_class_accuracy"]["class2"] is None
    assert [sum(row) for row in r["confusion_matrix"]] == [0, 3, 0, 3]


def test_perturbation_lab_on_a_48_pixel_checkpoint(app_env, monkeypatch):
    """The lab sizes its controls and its own-tile clutter by the checkpoint's image size."""
    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_depth=3, attention_width=2)
    path = ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), app_env / "tiny48.safetensors",
                                   {**META, "image_size": 48})
    monkeypatch.setenv("AR_CHECKPOINT", str(path))
    at = AppTest.from_string(
        "import streamlit as st\n"
        "from app.pages import inspect_page, lab_page\n"
        "(inspect_page if st.session_state.get('page', 'inspect') == 'inspect' else lab_page).render()\n",
        default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny48 (AR_CHECKPOINT)").run()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    at.session_state["page"] = "lab"
    at.run()
    assert at.slider(key="lab_osize").value == 12 and at.slider(key="lab_ox").max == 47
    at.slider(key="lab_scale").set_value(0.5).run()
    at.checkbox(key="lab_occlude").check().run()
    assert not at.exception and not _errors(at)
    shown = [key for key in at.session_state["traces"] if str(key[0]).startswith("lab-")]
    assert len(shown) == 3  # the unperturbed image, then each change


def test_benchmark_counts_model_runs_on_a_control_change(app_env, monkeypatch):
    """The benchmark's 'model runs on a control change' is counted, so a page that reruns the model
    on every display change reports it (here: a trace cache that never keeps anything)."""
    from app import state
    from app.timing import time_app

    assert time_app(repeats=1)["model_runs_on_control_change"] == 0
    uncached = lambda model, meta, key, images: ar_core.inference.inspect(model, images, meta)  # noqa: E731
    monkeypatch.setattr(state, "cached_inspection", uncached)
    assert time_app(repeats=1)["model_runs_on_control_change"] >= 2  # at least one per control change


def test_benchmark_runs_the_model_with_the_augmentation_asked_for(app_env):
    """`python -m app.bench --tta NAME` times the page with that augmentation, and says which ran."""
    from app.timing import time_app

    assert time_app(repeats=1, tta="none")["model_tta"] == ["none"]
    assert time_app(repeats=1, tta="flip-shift1")["model_tta"] == ["flip-shift1"]


def test_the_class_to_explain_and_decompose_is_each_new_images_prediction(app_env):
    """Keyed widgets keep their value across reruns: the class choices must start from the new image's prediction,
    and keep what the user chose while the image stays."""
    at = _start()
    preds = []
    def solid(seed):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), tuple(int(v) for v in np.random.default_rng(seed).integers(0, 256, 3))).save(buf,
                                                                                                             "PNG")
        return buf.getvalue()

    for seed in range(24):  # two plain colours the test model answers differently
        at.file_uploader(key="images").set_value([(f"{seed}.png", solid(seed), "image/png")]).run()
        pred = int(at.session_state["result"]["ins"].trace.output[0].argmax())
        if not preds or pred != preds[0][1]:
            preds.append((seed, pred))
        if len(preds) == 2:
            break
    (a, pa), (b, pb) = preds
    at.file_uploader(key="images").set_value([("a.png", solid(a), "image/png")]).run()
    open_tab(at, "5 · Attributions")
    assert at.selectbox(key="attr_target").value == pa
    at.multiselect(key="attr_methods").set_value(["saliency"])
    at.selectbox(key="attr_target").set_value(pb)
    at.button(key="attr_go").click().run()  # the class is a field of the attributions' form: chosen on submit
    open_tab(at, "4 · Global fusion")
    assert at.multiselect(key="contrib_classes").value == [pa]
    at.multiselect(key="contrib_classes").set_value([pa, pb]).run()
    open_tab(at, "5 · Attributions")
    assert at.selectbox(key="attr_target").value == pb  # the user's choices stay for this image, across tabs
    open_tab(at, "4 · Global fusion")
    assert at.multiselect(key="contrib_classes").value == [pa, pb]
    open_tab(at, "5 · Attributions")
    third = next(c for c in range(len(META["classes"])) if c not in (pa, pb))
    at.selectbox(key="attr_target").set_value(third)
    at.button(key="attr_go").click().run()
    at.file_uploader(key="images").set_value([("b.png", solid(b), "image/png")]).run()  # on the same tab
    assert not at.exception and not at.warning
    assert at.selectbox(key="attr_target").value == pb
    open_tab(at, "4 · Global fusion")
    assert at.multiselect(key="contrib_classes").value == [pb]


def test_the_inspectors_and_the_labs_controls_outlive_a_change_of_page(app_env):
    """Streamlit drops a widget's value once its page is left; app.main keeps the ones a user sets up."""
    at = AppTest.from_string(
        "import streamlit as st\n"
        "from app.main import carry_shared_widgets\n"
        "from app.pages import inspect_page, lab_page\n"
        "carry_shared_widgets()\n"
        "page = st.session_state.get('page', 'inspect')\n"
        "(inspect_page if page == 'inspect' else lab_page).render()\n", default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    at.radio(key="source").set_value("Dataset").run()
    at.number_input(key="browse_pos").set_value(5).run()
    shown = at.session_state["result"]["index"]
    at.session_state["page"] = "lab"
    at.run()
    at.slider(key="lab_noise").set_value(0.2).run()
    at.checkbox(key="lab_occlude").check().run()
    at.session_state["page"] = "inspect"
    at.run()
    assert at.radio(key="source").value == "Dataset" and at.number_input(key="browse_pos").value == 5
    assert at.session_state["result"]["index"] == shown
    at.session_state["page"] = "lab"
    at.run()
    assert not at.exception and not at.warning
    assert at.slider(key="lab_noise").value == 0.2 and at.checkbox(key="lab_occlude").value
    assert at.slider(key="lab_contrast").value == 1.0  # untouched controls keep their defaults


def test_inspect_from_the_dataset_page_keeps_the_sidebars_choices(app_env):
    """"Inspect" switches page from a button's callback, before any widget of the run is drawn, so
    Streamlit drops every widget's value: the inspector must still open on the model, augmentation and
    data set the list was made with, at the image clicked."""
    at = AppTest.from_string(DATASET_APP, default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    at.selectbox(key="tta").set_value("flip").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    at.number_input(key="faith_n").set_value(0)
    at.button(key="analyse_go").click().run()
    button = next(b for b in at.button if b.key and b.key.startswith("open_"))
    index = int(button.key.rsplit("_", 1)[1])
    button.click().run()
    assert not at.exception
    assert at.selectbox(key="model_label").value == "tiny-ad3 (AR_CHECKPOINT)"
    assert at.selectbox(key="tta").value == "flip"
    assert at.selectbox(key="dataset_kind").value == "ImageFolder directory"
    assert at.session_state["result"]["index"] == index


def test_a_checkpoint_without_class_names_reads_folders_by_position_only_when_the_counts_agree(app_env,
                                                                                              monkeypatch):
    """No names: the four outputs are read as the folder's four classes; a five-class folder is refused with
    a message saying why (by position its fifth label would be past the model's outputs)."""
    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_depth=3, attention_width=2)
    unnamed = {k: v for k, v in META.items() if k != "classes"}
    ckpt = ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), app_env / "tiny-ad3.safetensors",
                                   unnamed)
    assert "classes" not in ar_core.load_checkpoint(ckpt)[1]
    at = _analysed_dataset_page()
    assert not at.exception and not _errors(at)
    (r, _), = at.session_state["analyses"].values()
    assert r["classes"] == CLASSES and r["n"] == 12
    for c in range(5):
        (app_env / "five" / f"class{c}").mkdir(parents=True)
        (app_env / "five" / f"class{c}" / "0.png").write_bytes(_png(40 + c, (32, 32)))
    monkeypatch.setenv("AR_IMAGE_FOLDER", str(app_env / "five"))
    at = AppTest.from_string(DATASET_APP, default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny-ad3 (AR_CHECKPOINT)").run()
    at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
    assert not at.exception
    assert any("names no classes, so its 4 outputs are read as the data's class folders in sorted order, but "
               "the data has 5" in e for e in _errors(at))


def test_the_faithfulness_tab_says_why_it_has_no_curves(app_env, monkeypatch):
    def analysed(label, n, methods):
        at = AppTest.from_string(DATASET_APP, default_timeout=120).run()
        at.selectbox(key="model_label").set_value(label).run()
        at.selectbox(key="dataset_kind").set_value("ImageFolder directory").run()
        at.number_input(key="faith_n").set_value(n)
        at.multiselect(key="faith_methods").set_value(methods)
        at.button(key="analyse_go").click().run()
        assert not at.exception
        return [i.value for i in at.info], [c.value for c in at.caption]

    assert "Set a number of images above to compute deletion and insertion curves." in analysed(
        "tiny-ad3 (AR_CHECKPOINT)", 0, ["random"])[0]
    assert "Choose at least one map to test above." in analysed("tiny-ad3 (AR_CHECKPOINT)", 2, [])[0]
    monkeypatch.setenv("AR_CHECKPOINT", str(_checkpoint(app_env / "tiny-base.safetensors", ad=0)))
    assert "A baseline has no attention map to test: choose another map above." in analysed(
        "tiny-base (AR_CHECKPOINT)", 2, ["attention"])[0]
    assert "A baseline has no attention map: the other maps are tested." in analysed(
        "tiny-base (AR_CHECKPOINT)", 2, ["attention", "random"])[1]


def test_the_dataset_pages_lists_are_judged_in_float32_as_the_inspector_traces(app_env, monkeypatch):
    """Under autocast (CUDA, or a CPU with native bf16) a borderline image would be listed as rectified on
    the data-set page and open as not rectified in the inspector, which traces in float32."""
    monkeypatch.setattr(ar_core.precision, "native_bf16", lambda: True)  # 'auto' would pick bf16 here
    at = _analysed_dataset_page()
    assert not at.exception
    (r, _), = at.session_state["analyses"].values()
    assert r["precision"] == "float32"
