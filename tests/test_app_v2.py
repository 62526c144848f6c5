"""The explorer's gate-behaviour, sanity-check and atlas views, driven headlessly with AppTest."""

import os
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from streamlit.testing.v1 import AppTest

import ar_core

from conftest import ROOT, open_tab
from test_app import _analysed_dataset_page, _errors, _png, _start, app_env  # noqa: F401  (app_env is a fixture)


def _frame(at, column, first=None):
    """The one table with ``column`` (and ``first`` as its first value, when given)."""
    (frame,) = [d.value for d in at.dataframe if column in d.value.columns
                and (first is None or d.value.iloc[0, 0] == first)]
    return frame


def test_inspector_shows_each_gates_pre_tanh_value(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    assert not at.exception and not _errors(at)
    trace = at.session_state["result"]["ins"].trace
    open_tab(at, "4 · Global fusion")
    glob = _markdown_table(at, "global")
    assert list(glob["unit"]) == ["group1", "group2", "group3", "network"]
    assert list(glob["pre-tanh x"]) == pytest.approx(trace.global_pre_tanh[0].tolist(), abs=1e-3)
    assert list(glob["tanh(x)"]) == pytest.approx(torch.tanh(trace.global_pre_tanh[0]).tolist(), abs=1e-3)
    assert list(glob["weight"]) == pytest.approx(trace.global_gates[0].tolist(), abs=1e-3)
    charts = lambda: [c for c in at.get("plotly_chart") if "gv_glob_tanh" in c.proto.id]  # noqa: E731
    assert not charts()  # drawn on request only
    at.toggle(key="gv_glob_curve").set_value(True).run()
    assert not at.exception and len(charts()) == 1
    open_tab(at, "3 · Confidence gates")
    conf = _markdown_table(at, "group1")
    assert list(conf["gate"]) == ["group1"] * 2 + ["group2"] * 2 + ["group3"] * 2
    assert list(conf["pre-tanh x"]) == pytest.approx(
        torch.cat([l.gate_pre_tanh[0] for l in trace.layers]).tolist(), abs=1e-3)
    assert list(conf["saturated"]) == ["yes" if abs(x) > 2 else "" for x in conf["pre-tanh x"]]
    saturated = [f"{g} → {u}" for g, u, x in zip(conf["gate"], conf["unit"], conf["pre-tanh x"]) if abs(x) > 2]
    notes = [c.value for c in at.caption if "Saturated here" in c.value or "No unit is saturated" in c.value]
    assert len(notes) == 1
    (leaning,) = [c.value for c in at.caption if c.value.startswith("How far each gate leans on this image")]
    for layer in trace.layers:
        t = torch.tanh(layer.gate_pre_tanh[0].double())
        assert f"{layer.name} {float(t.max() - t.min()) / 2:.0%}" in leaning
    assert all(s in notes[0] for s in saturated) and (bool(saturated) == notes[0].startswith("Saturated here"))


def test_dataset_page_measures_gate_behaviour(app_env):
    at = _analysed_dataset_page()
    assert not at.exception and not _errors(at)
    (key, (r, _)), = at.session_state["analyses"].items()
    assert ar_core.load_checkpoint(os.environ["AR_CHECKPOINT"])[1]["weights_sha256"] in key  # by weights, not path
    stats = r["gate_pre_tanh"]
    table = _frame(at, "pre-tanh mean")
    assert len(table) == 4 + 3 * 2  # the global gate's 4 sources, then 2 heads in each of 3 layers
    assert list(table["pre-tanh mean"][:4]) == pytest.approx(stats["gates"]["global"]["mean"], abs=1e-3)
    assert list(table["gate weight mean"][:4]) == pytest.approx([r["global_gates"][s]["mean"] for s in r["sources"]],
                                                                abs=1e-3)
    assert list(table["saturated"][4:6]) == [f"{v:.1%}" for v in stats["gates"]["group1"]["saturated_fraction"]]
    leaning = _frame(at, "leans, mean")
    assert list(leaning["gate"]) == ["global", "group1", "group2", "group3"]
    assert list(leaning["leans, mean"]) == pytest.approx([g["lean"]["mean"] for g in stats["gates"].values()], abs=1e-3)
    verdicts = [w.value for w in at.warning if "in effect constants" in w.value] + \
               [s.value for s in at.success if "every gate responds" in s.value]
    assert len(verdicts) == 1
    at.selectbox(key="gv_gate").set_value("group2").run()
    assert not at.exception
    (fig,) = [c for c in at.get("plotly_chart") if "gv_hist" in str(c.proto.id)] or [None]
    assert fig is not None


def test_gate_tab_says_when_a_gate_sits_at_its_corner():
    """Every global unit pinned (-1, -1, +1, +1): the tab says the weights are that constant corner; the
    layers' gates, with a head in tanh's linear range, get no such note."""
    def page():
        import torch

        from app import gate_views
        from ar_core import gates as G

        sources, heads = ["g1", "g2", "g3", "network"], torch.tensor([[2.5, 0.3], [3.0, -0.4]])
        cat = {"global_pre_tanh": torch.tensor([[-3.9, -3.2, 3.9, 3.5], [-4.1, -2.9, 3.6, 2.1]]),
               **{f"gate_pre_tanh/{g}": heads for g in sources[:3]}}
        gate_views.dataset_gates({"gate_pre_tanh": G.gate_statistics(cat, sources),
                                  "global_gates": {s: {"mean": 0.25, "std": 0.0} for s in sources},
                                  "confidence_gates": {g: {"mean": [0.5, 0.5], "std": [0.0, 0.0]}
                                                       for g in sources[:3]}})

    at = AppTest.from_function(page).run()
    assert not at.exception
    (note,) = [i.value for i in at.info if "is pinned, so its weights" in i.value]
    assert note.startswith("Every unit of the global gate is pinned")
    assert "0.060 / 0.060 / 0.440 / 0.440 (g1, g2, g3, network)" in note


def test_inspector_sanity_check_runs_on_request(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    assert "Sanity check" in [t.label for t in at.tabs]
    open_tab(at, "Sanity check")
    assert any("Run the sanity check" in i.value for i in at.info)  # nothing computed until asked
    at.multiselect(key="sanity_methods").set_value(["attention", "saliency"])
    at.button(key="sanity_go").click().run()
    assert not at.exception and not _errors(at)
    (r,) = at.session_state["sanity"].values()
    assert r.stages == ["original", "gates & heads", "group3", "group2", "group1 & stem"]
    assert set(r.scores) == {"attention", "saliency"} and r.scores["attention"]["spearman"][0] == pytest.approx(1.0)
    assert any(c.proto.id.endswith("sanity_curve") for c in at.get("plotly_chart"))
    verdicts = [m.value for m in at.markdown if "resembles the original" in m.value or "constant" in m.value]
    assert len(verdicts) == 2 and verdicts[0].startswith("- **Attention (gated)**")
    assert len(at.get("download_button")) == 1  # the strip (the trace exports live on their own tab)


def test_dataset_page_head_atlas(app_env):
    at = _analysed_dataset_page()
    assert "Head atlas" in [t.label for t in at.tabs]
    (r, _), = at.session_state["analyses"].values()
    overview = _frame(at, "own accuracy")
    assert len(overview) == 6 and list(overview["layer"]) == ["group1"] * 2 + ["group2"] * 2 + ["group3"] * 2
    assert list(overview["own accuracy"]) == [f"{h['accuracy']:.1%}" for l in r["head_atlas"]["layers"].values()
                                              for h in l]
    at.selectbox(key="atlas_layer").set_value("group2").run()
    at.selectbox(key="atlas_head").set_value(1).run()
    assert not at.exception and not _errors(at)
    head = r["head_atlas"]["layers"]["group2"][1]
    top = [b for b in at.button if b.key and b.key.startswith("atlas_open_top_")]
    shown = [int(b.key.rsplit("_", 1)[1]) for b in top]  # column by column, so only the first is in rank order
    assert sorted(shown) == sorted(head["top_indices"]) and shown[0] == head["top_indices"][0]
    (maps,) = [v for k, v in at.session_state["atlas_maps"].items() if k[-3:-1] == ("group2", 1)]
    assert maps.shape == (24, 16, 16)  # 12 top and 12 bottom images, group2's 16x16 maps
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("atlas_mean_fig")]
    at.button(key="atlas_means_go").click().run()
    assert not at.exception
    assert [c for c in at.get("plotly_chart") if c.proto.id.endswith("atlas_mean_fig")]
    [b for b in at.button if b.key == f"atlas_open_bottom_{head['bottom_indices'][0]}"][0].click().run()
    assert not at.exception
    assert at.session_state["source"] == "Dataset" and at.session_state["browse_pos"] == head["bottom_indices"][0]


def _markdown_table(at, first_gate):
    """The Markdown table whose first row is of ``first_gate``, as {column: [values]}."""
    import pandas as pd

    for m in at.markdown:
        lines = m.value.splitlines()
        if lines and lines[0].startswith("| gate | unit | pre-tanh x") and lines[2].startswith(f"| {first_gate} |"):
            cols = [c.strip() for c in lines[0].strip("|").split("|")]
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
            frame = pd.DataFrame(rows, columns=cols)
            for c in ("pre-tanh x", "tanh(x)", "weight"):
                frame[c] = frame[c].astype(float)
            return frame
    raise AssertionError(f"no gate table for {first_gate}")


def _problems(at):
    """Error boxes other than the verdict of a spoiled prediction (a result, not a problem)."""
    return [e for e in _errors(at) if not e.startswith("**Spoiled.**")]


def _open(params):
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def _link(at):
    (code,) = [c.value for c in at.code if "checkpoint=" in c.value or "source=" in c.value]
    return parse_qs(urlsplit(code).query)


def test_a_link_opens_the_same_view(app_env):
    view = {"checkpoint": "tiny-ad3", "source": "dataset", "dataset": "folder", "index": "5", "layer": "group2",
            "head": "2", "class": "class3", "tta": "none", "tab": "2 · Attention maps"}
    at = _open(view)
    assert not at.exception and not _problems(at)
    assert not [c.value for c in at.caption if c.value.startswith("Link:")]
    ss = at.session_state
    assert ss["model_label"] == "tiny-ad3 (AR_CHECKPOINT)" and ss["tta"] == "none"
    assert ss["result"]["index"] == 5 and ss["result"]["name"].endswith("#5")
    assert (ss["hm_layer"], ss["hm_head"], ss["attr_target"]) == (1, 1, 3)
    assert ss["tab"] == "2 · Attention maps"
    link = _link(at)
    assert {k: v[0] for k, v in link.items()} == view  # the link reproduces the view it was opened with
    for k, v in view.items():
        if k != "tab":
            assert at.query_params[k] == [v] or at.query_params[k] == v, k
    # the URL follows the view: another head, another link
    at.selectbox(key="hm_head").set_value(0).run()
    assert _link(at)["head"] == ["1"]


def test_bad_link_values_fall_back_with_a_note(app_env):
    at = _open({"checkpoint": "no-such-model", "source": "ftp", "index": "abc", "layer": "group9", "head": "7",
                "class": "zebra", "tta": "maybe", "tab": "9 · Nonsense", "dataset": "imagenet"})
    assert not at.exception and not _problems(at)
    (note,) = [c.value for c in at.caption if c.value.startswith("Link:")]
    for word in ("no-such-model", "ftp", "abc", "group9", "'7'", "zebra", "maybe", "9 · Nonsense", "imagenet"):
        assert word in note, word
    ss = at.session_state
    assert ss["source"] == "Upload" and ss["tta"] == "as trained" and "hm_layer" not in ss
    assert any("Upload an image" in i.value for i in at.info)


def test_uploaded_images_are_not_in_links(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    link = _link(at)
    assert link["source"] == ["upload"] and "index" not in link and link["checkpoint"] == ["tiny-ad3"]
    assert any("Not in links: uploaded images" in c.value for c in at.caption)
    at = _open({"index": "99", "source": "dataset", "dataset": "folder"})  # 12 images: 99 is not one
    assert not at.exception
    assert at.session_state["result"]["index"] == 0
    assert any("image 99 is not in this data set; showing image 0" in c.value for c in at.caption)


def test_a_link_names_a_shipped_checkpoint(app_env):
    at = _open({"checkpoint": "cifar100-wrn16x4-ad3aw4", "class": "apple", "layer": "group3"})
    assert not at.exception and not [c.value for c in at.caption if c.value.startswith("Link:")]
    assert at.session_state["model_label"] == "cifar100-wrn16x4-ad3aw4 (shipped)"
    assert at.session_state["attr_target"] == 0 and at.session_state["hm_layer"] == 2  # checked on its own config


def test_a_links_class_is_for_the_image_it_opens_not_the_next_one(app_env):
    """A link's class to explain belongs to its image: moved to another image before the Attributions tab
    is opened, the inspector explains that image's own prediction."""
    at = _open({"checkpoint": "tiny-ad3", "source": "dataset", "dataset": "folder", "index": "6"})
    following = int(at.session_state["result"]["ins"].trace.output[0].argmax())
    linked = (following + 1) % 4
    at = _open({"checkpoint": "tiny-ad3", "source": "dataset", "dataset": "folder", "index": "5",
                "class": f"class{linked}"})
    assert at.session_state["result"]["index"] == 5
    at.number_input(key="browse_pos").set_value(6).run()
    open_tab(at, "5 · Attributions")
    assert at.session_state["result"]["index"] == 6
    assert at.selectbox(key="attr_target").value == following
    at = _open({"checkpoint": "tiny-ad3", "source": "dataset", "dataset": "folder", "index": "5",
                "class": f"class{linked}"})
    open_tab(at, "5 · Attributions")  # on the linked image itself the link's class stands
    assert at.selectbox(key="attr_target").value == linked


def test_the_tabs_controls_outlive_a_change_of_tab_while_the_model_offers_them(app_env):
    """Only the open tab is built, so Streamlit drops the controls of the tab left: the heatmap's layer and
    head, the overlays' display and the attribution settings come back with their tab."""
    from test_app import _checkpoint

    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    open_tab(at, "2 · Attention maps")
    at.selectbox(key="hm_layer").set_value(1).run()
    at.selectbox(key="hm_head").set_value(1).run()
    at.slider(key="alpha").set_value(0.3).run()
    at.selectbox(key="cmap").set_value("gray").run()
    open_tab(at, "5 · Attributions")
    at.multiselect(key="attr_methods").set_value(["saliency"])
    at.selectbox(key="attr_layer").set_value("group2")
    at.checkbox(key="attr_nt").check()
    at.button(key="attr_go").click().run()
    open_tab(at, "1 · Prediction")
    assert _link(at)["layer"] == ["group2"] and _link(at)["head"] == ["2"]  # the link names what the tab shows
    open_tab(at, "2 · Attention maps")
    assert not at.exception
    assert (at.selectbox(key="hm_layer").value, at.selectbox(key="hm_head").value) == (1, 1)
    assert (at.slider(key="alpha").value, at.selectbox(key="cmap").value) == (0.3, "gray")
    open_tab(at, "5 · Attributions")
    assert at.multiselect(key="attr_methods").value == ["saliency"]
    assert at.selectbox(key="attr_layer").value == "group2" and at.checkbox(key="attr_nt").value
    open_tab(at, "1 · Prediction")  # a model with one attended layer has no second one to show
    one = _checkpoint(app_env / "tiny-ad1.safetensors", ad=1)
    at.sidebar.file_uploader(key="ckpt_upload").set_value(("tiny-ad1.safetensors", one.read_bytes(),
                                                           "application/octet-stream")).run()
    at.selectbox(key="model_label").set_value("tiny-ad1 (uploaded)").run()
    open_tab(at, "2 · Attention maps")
    assert not at.exception
    assert (at.selectbox(key="hm_layer").value, at.selectbox(key="hm_head").value) == (0, 1)
    open_tab(at, "5 · Attributions")
    assert at.selectbox(key="attr_layer").value == at.selectbox(key="attr_layer").options[-1]


def test_a_link_names_a_class_of_a_checkpoint_without_class_names_as_the_inspector_does(app_env, monkeypatch):
    from test_app import META, randomize_bn

    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_depth=3, attention_width=2)
    unnamed = {k: v for k, v in META.items() if k != "classes"}
    ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), app_env / "tiny-ad3.safetensors", unnamed)
    at = _open({"checkpoint": "tiny-ad3", "source": "dataset", "dataset": "folder", "index": "2", "class": "3"})
    assert not at.exception and not [c.value for c in at.caption if c.value.startswith("Link:")]
    assert at.session_state["attr_target"] == 3 and _link(at)["class"] == ["3"]


def test_guided_walk_steps_through_the_prediction(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("cat.png", _png(), "image/png")]).run()
    assert "Walk me through" in [t.label for t in at.tabs]
    open_tab(at, "Walk me through")
    assert not [p for p in at.get("progress")]  # nothing but a button until asked
    at.button(key="walk_start").click().run()
    seen = []
    for _ in range(6):
        assert not at.exception
        (bar,) = at.get("progress")
        seen.append([s.value for s in at.subheader if s.value[:2] in ("1.", "2.", "3.", "4.", "5.", "6.")][0])
        if at.button(key="walk_next").disabled:
            break
        at.button(key="walk_next").click().run()
    assert seen == ["1. The network's own answer", "2. Attention on group1 (32x32)", "3. Attention on group2 (16x16)",
                    "4. Attention on group3 (8x8)", "5. Whom the global gate trusted", "6. The final answer"]
    assert at.button(key="walk_next").disabled and not at.button(key="walk_prev").disabled
    at.button(key="walk_prev").click().run()
    assert "5. Whom the global gate trusted" in [s.value for s in at.subheader]
    trace = at.session_state["result"]["ins"].trace
    best = int(trace.layers[2].confidence_gates[0].argmax())
    at.button(key="walk_prev").click().run()
    assert any(f"trusts head {best + 1} most" in m.value for m in at.markdown)


def test_maps_on_the_original_photo(app_env):
    at = _start()
    at.file_uploader(key="images").set_value([("wide.png", _png(size=(300, 200)), "image/png")]).run()
    open_tab(at, "2 · Attention maps")
    n = len(at.get("image"))
    at.toggle(key="on_photo").set_value(True).run()
    assert not at.exception
    assert len(at.get("image")) == n + 3 * 2  # every head of every layer once more, on the photo
    assert any("200x200 pixels shown; the model saw it as 32x32" in c.value for c in at.caption)
    # the session keeps the region the model saw, at most 512 pixels a side, never the whole decoded photo
    assert at.session_state["result"]["photo"].shape == (200, 200, 3)
    from PIL import Image

    assert not any(isinstance(v, Image.Image) for v in at.session_state["model_input"])
    at.file_uploader(key="images").set_value([("icon.png", _png(size=(24, 20)), "image/png")]).run()
    assert not at.exception and at.session_state["result"]["name"] == "icon.png"
    assert not at.get("toggle")  # a photo no larger than the model input has nothing more to show


def test_no_dead_ends_sample_photo_and_random_image(app_env):
    from app.samples import SAMPLE_NAME, sample_path

    at = _start()
    assert sample_path() is not None  # matplotlib ships it
    at.button(key="inspect_sample").click().run()
    assert not at.exception and at.session_state["result"]["name"] == SAMPLE_NAME
    assert at.metric[0].label == "Prediction (fused)"
    with pytest.raises(KeyError):
        at.button(key="inspect_sample")  # gone once there is a result
    at = _start()
    at.button(key="inspect_random").click().run()
    assert not at.exception and at.session_state["source"] == "Dataset"
    assert at.session_state["result"]["index"] is not None and "_random_pick" not in at.session_state


def test_image_folder_is_the_default_dataset_and_labels_do_not_wrap(app_env):
    at = _start()
    at.radio(key="source").set_value("Dataset").run()
    assert at.selectbox(key="dataset_kind").value == "ImageFolder directory"  # AR_IMAGE_FOLDER is set
    open_tab(at, "2 · Attention maps")
    assert [m.value for m in at.markdown if m.value.startswith("**group")] == [
        "**group1** · 32x32", "**group2** · 16x16", "**group3** · 8x8"]  # a full-width line, not a narrow column


def test_source_lists_are_captioned_with_that_sources_answer(app_env):
    at = _analysed_dataset_page()
    at.selectbox(key="src_pick").set_value("network").run()
    (_, arrays), = at.session_state["analyses"].values()
    classes = [f"class{i}" for i in range(4)]
    wrong = [i for i in range(12) if arrays["net_pred"][i] != i // 3]
    captions = [img.caption for el in at.get("image") for img in el.proto.imgs if img.caption.startswith("#")]
    assert any(arrays["pred"][i] != arrays["net_pred"][i] for i in wrong)  # else the test could not tell
    first = captions[:len(wrong)]  # the first list on the page is the source's (other tabs list images too)
    assert wrong and sorted(first) == sorted(f"#{i} {classes[i // 3]}→{classes[int(arrays['net_pred'][i])]}"
                                             for i in wrong)  # true class → the network's own answer
