"""The data-set analysis: statistics on hand-made cases, and the CLI on a tiny ImageFolder."""

import json
import math

import pytest
import torch

import ar_core
from ar_core import analyze as A
from conftest import randomize_bn
from test_data import make_image_folder


def test_entropy_and_mutual_information():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert A.entropy(p).tolist() == pytest.approx([0.0, math.log(2)])
    a = torch.tensor([0, 1, 0, 1])
    assert A.mutual_information(a, a, 2, 2) == pytest.approx(1.0)  # a fair bit, fully shared
    assert A.mutual_information(a, torch.tensor([0, 0, 1, 1]), 2, 2) == pytest.approx(0.0)
    assert A.mutual_information(torch.zeros(4, dtype=torch.long), a, 2, 2) == pytest.approx(0.0)


def test_dataset_story_on_a_hand_made_case():
    labels = torch.tensor([0, 0, 1, 1])
    cat = {"pred": torch.tensor([0, 1, 1, 1]), "net_pred": torch.tensor([1, 0, 1, 0]),
           "confidence": torch.tensor([0.9, 0.6, 0.8, 0.7]),
           "global_gates": torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.7, 0.3], [0.9, 0.1]]),
           "conf_gates/g": torch.tensor([[0.5, 0.5]] * 4), "head_pred/g": torch.tensor([[0, 1], [0, 1], [1, 1], [1, 1]]),
           "pred/g": torch.tensor([0, 0, 1, 1])}
    s = A.dataset_story(cat, labels, ["cat", "dog"], ["g", "network"])
    assert s["rectification"] == {"network right, fused right": 1, "network right, fused wrong (spoiled)": 1,
                                  "network wrong, fused right (rectified)": 2, "network wrong, fused wrong": 0}
    assert s["rectification_per_class"]["cat"] == {"rectified": 1, "spoiled": 1}
    assert s["dominant_source_share"] == {"g": 0.75, "network": 0.25}
    assert s["global_gates_per_class"][0] == pytest.approx([0.6, 0.4])
    assert s["head_class_mi_bits"]["g"] == pytest.approx([1.0, 0.0])  # head 1 reads the class, head 2 never
    assert s["head_favourite_class"]["g"] == ["cat", "dog"]
    assert s["confidence_gate_entropy"]["g"] == pytest.approx(math.log(2))
    assert s["net_confusion_matrix"] == [[1, 1], [1, 1]]


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    classes = ["a", "b", "c"]
    root = tmp_path / "data"
    make_image_folder(root, classes, per_class=4)
    torch.manual_seed(0)
    model = randomize_bn(ar_core.build_model(ar_core.ModelConfig(num_classes=3, depth=10, width=1,
                                                                 attention_width=2))).eval()
    ckpt = ar_core.save_checkpoint(model, tmp_path / "m.safetensors", {"classes": classes})
    return root, ckpt


def test_analysis_matches_an_independent_computation_and_resumes_from_cache(tiny_setup, monkeypatch):
    root, ckpt = tiny_setup
    monkeypatch.setattr(ar_core.precision, "native_bf16", lambda: False)  # float32, as the re-computation
    model, meta = ar_core.load_checkpoint(ckpt)
    data = ar_core.data.load_image_folder(root)
    r = A.analyze(model, data, meta, faithfulness_n=2, methods=["attention", "saliency", "random"], batch_size=5)
    # the same numbers from one plain trace of all twelve images, counted by hand
    with torch.no_grad():
        t = model.trace(ar_core.inference.preprocess(data.images, meta))
    y = data.labels.tolist()
    fused, net = t.output.argmax(1).tolist(), t.net_output.argmax(1).tolist()
    assert r["accuracy"] == sum(f == c for f, c in zip(fused, y)) / 12
    assert r["net_accuracy"] == sum(n == c for n, c in zip(net, y)) / 12
    assert r["rectified"] == sum(n != c and f == c for f, n, c in zip(fused, net, y))
    assert r["spoiled"] == sum(n == c and f != c for f, n, c in zip(fused, net, y))
    cm = [[sum(1 for f, c in zip(fused, y) if c == i and f == j) for j in range(3)] for i in range(3)]
    assert r["confusion_matrix"] == cm
    for layer in t.layers:
        hyp = layer.hypothesis.argmax(1).tolist()
        assert r["source_accuracy"][layer.name] == sum(h == c for h, c in zip(hyp, y)) / 12
    top = t.global_gates.argmax(1).tolist()
    assert r["dominant_source_share"] == {s: top.count(j) / 12 for j, s in enumerate(t.sources)}
    assert sum(r["rectification"].values()) == 12
    assert set(r["faithfulness"]) == {"attention", "saliency", "random"}
    assert r["faithfulness"]["random"]["n"] == 2
    # the gates' pre-tanh statistics come from the same pass: they match a direct trace
    from ar_core.inference import preprocess

    with torch.no_grad():
        t = model.trace(preprocess(data.images, meta))
    glob = r["gate_pre_tanh"]["gates"]["global"]
    assert glob["units"] == model.sources
    # (float32 both, as set above: only the batching differs)
    assert glob["mean"] == pytest.approx(t.global_pre_tanh.double().mean(0).tolist(), abs=1e-5)
    assert glob["max"] == pytest.approx(t.global_pre_tanh.max(0).values.tolist(), abs=1e-5)
    assert r["gate_pre_tanh"]["gates"]["group2"]["mean"] == pytest.approx(
        t.layers[1].gate_pre_tanh.double().mean(0).tolist(), abs=1e-5)
    # a second run is served from the cache: collecting again would be an error here
    monkeypatch.setattr(A, "collect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    monkeypatch.setattr(A, "faithfulness", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = A.analyze(model, data, meta, faithfulness_n=2, methods=["attention", "saliency", "random"], batch_size=5)
    assert again["faithfulness"] == r["faithfulness"] and again["accuracy"] == r["accuracy"]


def test_interrupted_collection_resumes(tiny_setup, tmp_path):
    root, ckpt = tiny_setup
    model, meta = ar_core.load_checkpoint(ckpt)
    data = ar_core.data.load_image_folder(root)
    cache = tmp_path / "partial.safetensors"
    full = A.collect_cached(model, data, meta, None, chunk=5, batch_size=5)
    first = A.collect_cached(model, data.subset(torch.arange(5)), meta, cache, chunk=5, batch_size=5)
    assert A._load_partial(cache)[1] == 5 and len(first["pred"]) == 5
    resumed = A.collect_cached(model, data, meta, cache, chunk=5, batch_size=5)
    for k in full:
        assert torch.equal(resumed[k], full[k]), k


def test_cli_writes_json_and_figures(tiny_setup, tmp_path, capsys):
    root, ckpt = tiny_setup
    out = tmp_path / "report"
    A.main(["--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), "--faithfulness", "2",
            "--methods", "attention", "gradcam", "random", "--batch-size", "4"])
    result = json.loads((out / "analysis.json").read_text())
    printed = capsys.readouterr().out.splitlines()
    summary = result["gate_pre_tanh"]["summary"]
    assert len(summary) >= 4 + 3 * 2 and printed[:len(summary)] == summary  # one line per gate unit, printed
    assert 0 <= result["accuracy"] <= 1 and result["n"] == 12
    for name in ("reliability.png", "confusion_matrix.png", "net_confusion_matrix.png", "source_accuracy.png",
                 "global_gates_per_class.png", "head_class_mi.png", "faithfulness.png", "gate_pre_tanh.png"):
        assert (out / name).stat().st_size > 1000, name
    assert set(result["figures"]) >= {"reliability.png", "faithfulness.png"}
    assert set(result["gate_pre_tanh"]["gates"]) == {"global", "group1", "group2", "group3"}
    atlas = result["head_atlas"]["layers"]
    assert set(atlas) == {"group1", "group2", "group3"} and len(atlas["group3"]) == 2
    assert sorted(atlas["group1"][0]["top_indices"]) == list(range(12))  # only 12 images: all of them
    assert sum(h["most_trusted_share"] for h in atlas["group2"]) == pytest.approx(1.0)


def test_cli_sanity_check(tiny_setup, tmp_path):
    root, ckpt = tiny_setup
    out = tmp_path / "report"
    A.main(["--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), "--faithfulness", "0",
            "--sanity", "2"])
    s = json.loads((out / "analysis.json").read_text())["sanity"]
    assert s["images"] == 2 and s["stages"] == ["original", "gates & heads", "group3", "group2", "group1 & stem"]
    assert set(s["methods"]) == {"attention", "saliency", "integrated_gradients", "gradcam"}
    assert s["methods"]["saliency"]["spearman_mean"][0] == 1.0
    assert (out / "sanity.png").stat().st_size > 1000


def test_cli_errors(tiny_setup, tmp_path):
    root, ckpt = tiny_setup
    with pytest.raises(SystemExit, match="error: no checkpoint"):
        A.main(["--checkpoint", str(tmp_path / "nope.safetensors"), "--data", str(root), "--out", str(tmp_path)])
    other = ar_core.save_checkpoint(ar_core.build_model(ar_core.ModelConfig(num_classes=3, depth=10, width=1)),
                                    tmp_path / "o.safetensors", {"classes": ["x", "y", "z"]})
    with pytest.raises(SystemExit, match="do not match"):
        A.main(["--checkpoint", str(other), "--data", str(root), "--out", str(tmp_path / "o"), "--faithfulness", "0"])


def test_cli_checks_its_image_source_as_the_evaluator_does(tiny_setup, tmp_path, capsys):
    """The split is carved from the training folder only, never from torchvision's test split; a checkpoint of
    64x64 images is not fed CIFAR's 32x32 ones. Both refused before anything is read or downloaded."""
    root, ckpt = tiny_setup
    with pytest.raises(SystemExit) as e:
        A.main(["--checkpoint", str(ckpt), "--torchvision", "cifar10", "--validation-split", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--validation-split needs --data TRAIN_DIR" in capsys.readouterr().err
    model, meta = ar_core.load_checkpoint(ckpt)
    big = ar_core.save_checkpoint(model, tmp_path / "big.safetensors", {**meta, "image_size": 64})
    with pytest.raises(SystemExit, match="expects 64x64 images; torchvision's CIFAR is 32x32"):
        A.main(["--checkpoint", str(big), "--torchvision", "cifar10", "--root", str(tmp_path / "nothing"),
                "--out", str(tmp_path / "o")])
    assert not (tmp_path / "nothing").exists()


def test_the_cache_tells_apart_the_same_weights_under_another_normalisation(tiny_setup):
    """A checkpoint re-saved with other input statistics answers differently: it must not be served the old
    answers (analyze and compare share this cache, the faithfulness curves key on it too)."""
    from ar_core import data as D
    from ar_core.tta import TTA

    folder, ckpt = tiny_setup
    _, meta = ar_core.load_checkpoint(ckpt)
    ds = D.load_image_folder(folder)
    other = {**meta, "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}}
    assert A.cache_key(meta, ds) == A.cache_key(dict(meta), ds)
    assert A.cache_key(meta, ds) != A.cache_key(other, ds)
    assert A.predictions_cache(meta, ds, TTA(), "float32") != A.predictions_cache(other, ds, TTA(), "float32")
