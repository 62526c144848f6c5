"""ar_core.evaluate: metric helpers on hand-checked cases, evaluate() against an independent
re-computation from model.trace, and the command line's output and error handling."""

import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ar_core import ModelConfig, build_model, load_checkpoint, save_checkpoint
from ar_core import data as D
from ar_core import evaluate as E
from conftest import ROOT, randomize_bn
from test_data import make_image_folder, write_png

CLASSES = ["ape", "bee", "cat", "dog", "eel", "fox", "gnu"]
NORM = {"mean": [0.45, 0.5, 0.55], "std": [0.25, 0.2, 0.3]}


# ---------------------------------------------------------------- helpers, by hand

def test_ece_of_a_hand_computed_example():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 0])
    # bins of width 1/15: 0.9 → (13/15, 14/15] holds 2 images, accuracy 1/2: |0.5 - 0.9| · 2/4 = 0.2
    # 0.7 → (10/15, 11/15], 1 right: |1 - 0.7| / 4 = 0.075;  0.55 → (8/15, 9/15], wrong: 0.55 / 4 = 0.1375
    assert E.expected_calibration_error(probs, labels) == pytest.approx(0.4125, abs=1e-6)
    # one bin: |mean accuracy 0.5 - mean confidence 0.7625|
    assert E.expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.2625, abs=1e-6)


def test_ece_edges_and_perfect_calibration():
    certain = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert E.expected_calibration_error(certain, torch.tensor([0, 1])) == 0.0  # confidence 1 lands in the last bin
    assert E.expected_calibration_error(certain, torch.tensor([1, 0])) == pytest.approx(1.0)
    half = torch.tensor([[0.5, 0.5]] * 4)  # confidence 0.5, half of them right
    assert E.expected_calibration_error(half, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-9)
    # bins are (lo, hi]: with 2 bins a confidence of exactly 0.5 belongs to the lower one
    edge = torch.tensor([[0.5, 0.5], [0.75, 0.25]])
    assert E.expected_calibration_error(edge, torch.tensor([0, 1]), bins=2) == pytest.approx((0.5 + 0.75) / 2)
    with pytest.raises(ValueError):
        E.expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_confusion_matrix_rows_are_true_classes():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 0, 2])
    cm = E.confusion_matrix(pred, labels, 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    assert E.confusion_matrix(torch.tensor([1]), torch.tensor([1]), 4).tolist() == [
        [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_topk_correct():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9], [4.0, 3.0, 2.0, 1.0]])
    assert E.topk_correct(scores, torch.tensor([1, 2]), 1).tolist() == [False, False]
    assert E.topk_correct(scores, torch.tensor([1, 2]), 2).tolist() == [True, False]
    assert E.topk_correct(scores, torch.tensor([0, 3]), 5).tolist() == [True, True]  # k > M: every class


def test_mean_std_is_per_column_population_std():
    mean, std = E.mean_std(torch.tensor([[0.2, 1.0], [0.4, 3.0]]))
    assert mean == pytest.approx([0.3, 2.0]) and std == pytest.approx([0.1, 1.0])
    assert E.mean_std(torch.tensor([[0.5]])) == ([0.5], [0.0])


def test_align_labels_renumbers_by_name_and_names_mismatches():
    ds = D.TensorDataset(torch.zeros(3, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2]), ["a", "b", "c"])
    same = E.align_labels(ds, ["a", "b", "c"])
    assert same is ds
    moved = E.align_labels(ds, ["c", "a", "b"])
    assert moved.labels.tolist() == [1, 2, 0] and moved.classes == ["c", "a", "b"]
    with pytest.raises(E.ClassMismatchError, match=r"missing .*: d.*extra .*: c"):
        E.align_labels(ds, ["a", "b", "d"])
    # a folder holding some of the checkpoint's classes, in its own order
    part = E.align_labels(ds, ["d", "c", "b", "a", "e"], subset=True)
    assert part.labels.tolist() == [3, 2, 1] and part.classes == ["d", "c", "b", "a", "e"]
    with pytest.raises(E.ClassMismatchError, match=r"missing .*: d, e"):
        E.align_labels(ds, ["d", "c", "b", "a", "e"])
    with pytest.raises(E.ClassMismatchError, match=r"extra .*: c"):
        E.align_labels(ds, ["a", "b", "d"], subset=True)


# ---------------------------------------------------------------- evaluate() on a tiny checkpoint

def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 32, 32) uint8 colour blobs: varied enough for a random network to disagree with itself."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, 3, 4, 4), generator=g).float()
    return F.interpolate(low, size=32, mode="bilinear").round().clamp(0, 255).to(torch.uint8)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(NORM["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(NORM["std"]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny_checkpoint(tmp_path, cache):
    """A 7-class AD=3, K=2 WRN-10-1 with random weights, and an ImageFolder of 60 images whose labels
    are picked from the model's own answers, so that fusion both rectifies and spoils some of them."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelConfig(num_classes=7, depth=10, width=1, attention_width=2))).eval()
    path = save_checkpoint(model, tmp_path / "tiny.safetensors",
                           {"classes": CLASSES, "normalization": NORM, "image_size": 32, "dataset": "toy"})
    images = _smooth_images(60, seed=0)
    with torch.no_grad():
        t = model.trace(_normalise(images))
    fused, net = t.output.argmax(1), t.net_output.argmax(1)
    root = tmp_path / "set"
    disagreements = 0
    for i in range(len(images)):
        if fused[i] != net[i]:
            label = int(fused[i] if disagreements % 2 == 0 else net[i])  # rectified, spoiled, rectified, ...
            disagreements += 1
        else:
            label = i % len(CLASSES)
        write_png(root / CLASSES[label] / f"{i:03d}.png", images[i].permute(1, 2, 0).numpy())
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    assert disagreements >= 4
    return path, root


def _independent(model, ds):
    """The metrics recomputed from one model.trace over the whole set, by plain loops."""
    with torch.no_grad():
        t = model.trace(_normalise(ds.images))
    y = ds.labels.tolist()
    n, m = len(y), len(CLASSES)
    out = t.output.double()
    probs = torch.softmax(out, 1)
    pred = out.argmax(1).tolist()
    net = t.net_output.argmax(1).tolist()
    right = [p == label for p, label in zip(pred, y)]
    cm = [[0] * m for _ in range(m)]
    for p, label in zip(pred, y):
        cm[label][p] += 1
    ece = 0.0
    conf = probs.max(1).values.tolist()
    for b in range(15):
        inside = [i for i in range(n) if b / 15 < conf[i] <= (b + 1) / 15]
        if inside:
            acc_b = sum(right[i] for i in inside) / len(inside)
            conf_b = sum(conf[i] for i in inside) / len(inside)
            ece += len(inside) / n * abs(acc_b - conf_b)
    ranks = [(out[i] > out[i, y[i]]).sum().item() for i in range(n)]
    sources = {layer.name: layer.hypothesis.argmax(1).tolist() for layer in t.layers}
    sources["network"] = net
    gates = t.global_gates.double().numpy()
    return {
        "accuracy": sum(right) / n,
        "top5_accuracy": sum(r < 5 for r in ranks) / n,
        "nll": -sum(math.log(probs[i, y[i]].item()) for i in range(n)) / n,
        "ece": ece,
        "confusion_matrix": cm,
        "per_class_accuracy": {c: (cm[j][j] / sum(cm[j]) if sum(cm[j]) else None) for j, c in enumerate(CLASSES)},
        "source_accuracy": {**{s: sum(p == label for p, label in zip(ps, y)) / n for s, ps in sources.items()},
                            "fused": sum(right) / n},
        "rectified": sum(net[i] != y[i] and pred[i] == y[i] for i in range(n)),
        "spoiled": sum(net[i] == y[i] and pred[i] != y[i] for i in range(n)),
        "global_gates": {s: (gates[:, j].mean(), gates[:, j].std()) for j, s in enumerate(t.sources)},
        "confidence_gates": {layer.name: (layer.confidence_gates.double().numpy().mean(0),
                                          layer.confidence_gates.double().numpy().std(0)) for layer in t.layers},
    }


def test_evaluate_matches_an_independent_computation(tiny_checkpoint):
    path, root = tiny_checkpoint
    model, meta = load_checkpoint(path)
    ds = D.load_image_folder(root, meta["image_size"])
    r = E.evaluate(model, ds, meta, batch_size=7, amp="off")  # 7: batches that do not divide 60
    reference, _ = load_checkpoint(path)
    want = _independent(reference, ds)

    assert r["n"] == 60 and r["precision"] == "float32"
    assert r["confusion_matrix"] == want["confusion_matrix"]
    assert r["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert r["top5_accuracy"] == pytest.approx(want["top5_accuracy"], abs=1e-12)
    assert 0 < want["top5_accuracy"] < 1 and 0 < want["accuracy"] < 1  # neither metric is trivial here
    assert r["nll"] == pytest.approx(want["nll"], rel=1e-5)
    assert r["ece"] == pytest.approx(want["ece"], abs=1e-5)
    assert r["per_class_accuracy"] == pytest.approx(want["per_class_accuracy"], abs=1e-12)
    assert list(r["source_accuracy"]) == ["group1", "group2", "group3", "network", "fused"]
    assert r["source_accuracy"] == pytest.approx(want["source_accuracy"], abs=1e-12)
    assert (r["rectified"], r["spoiled"]) == (want["rectified"], want["spoiled"])
    assert r["rectified"] > 0 and r["spoiled"] > 0
    assert list(r["global_gates"]) == ["group1", "group2", "group3", "network"]
    for s, (mean, std) in want["global_gates"].items():
        assert r["global_gates"][s]["mean"] == pytest.approx(mean, abs=1e-6)
        assert r["global_gates"][s]["std"] == pytest.approx(std, abs=1e-6)
    for name, (mean, std) in want["confidence_gates"].items():
        assert r["confidence_gates"][name]["mean"] == pytest.approx(mean.tolist(), abs=1e-6)
        assert r["confidence_gates"][name]["std"] == pytest.approx(std.tolist(), abs=1e-6)
    assert r["seconds"] > 0 and r["images_per_s"] > 0
    json.dumps(r, allow_nan=False)  # JSON-ready as it is
    assert not model.training


def test_flip_tta_evaluates_the_mean_of_image_and_mirror(tiny_checkpoint, capsys):
    """--tta flip scores argmax of the two views' mean; 'auto' follows the checkpoint's recipe."""
    path, root = tiny_checkpoint
    model, meta = load_checkpoint(path)
    ds = E.align_labels(D.load_image_folder(root, 32), CLASSES)
    with torch.no_grad():
        x = _normalise(ds.images)
        mean = (model.trace(x).output + model.trace(x.flip(3)).output) / 2
    want = float((mean.argmax(1) == ds.labels).double().mean())
    r = E.evaluate(model, ds, meta, batch_size=16, amp="off", tta="flip")
    assert r["test_time_augmentation"] == "flip" and r["accuracy"] == pytest.approx(want, abs=1e-12)
    assert E.evaluate(model, ds, meta, amp="off")["test_time_augmentation"] == "none"  # no flip in the recipe
    assert E.evaluate(model, ds, {**meta, "test_time_augmentation": "flip"}, amp="off")["accuracy"] == r["accuracy"]
    E.main(["--checkpoint", str(path), "--data", str(root), "--json", "--amp", "off", "--tta", "flip",
            "--no-progress"])
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli["test_time_augmentation"] == "flip" and cli["accuracy"] == r["accuracy"]


def test_evaluate_under_bf16_reports_its_own_path(tiny_checkpoint, monkeypatch):
    """Forced bf16 (emulated where the CPU lacks it): the numbers and the precision label agree."""
    path, root = tiny_checkpoint
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    model, meta = load_checkpoint(path)
    r = E.evaluate(model, D.load_image_folder(root), meta, batch_size=32, amp="auto")
    assert r["precision"] == "bfloat16"
    cm = np.array(r["confusion_matrix"])
    assert cm.sum() == 60 and r["accuracy"] == pytest.approx(np.trace(cm) / 60)
    assert r["source_accuracy"]["fused"] == r["accuracy"]


def test_evaluate_baseline_has_no_attention_statistics(tmp_path, cache):
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, depth=10, width=1, attention_depth=0)).eval()
    make_image_folder(tmp_path / "set", classes=("a", "b", "c"), per_class=2)
    meta = {"classes": ["a", "b", "c"], "normalization": NORM}
    r = E.evaluate(model, D.load_image_folder(tmp_path / "set"), meta, amp="off")
    assert r["n"] == 6 and sum(map(sum, r["confusion_matrix"])) == 6
    for key in ("source_accuracy", "rectified", "spoiled", "global_gates", "confidence_gates"):
        assert key not in r
    assert "accuracy" in E.format_report(r)


def test_evaluate_refuses_other_classes(tiny_checkpoint):
    path, _ = tiny_checkpoint
    model, meta = load_checkpoint(path)
    ds = D.TensorDataset(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]), ["ape", "yak"])
    with pytest.raises(E.ClassMismatchError, match="yak"):
        E.evaluate(model, ds, meta)


# ---------------------------------------------------------------- command line

def test_cli_json_last_line(tiny_checkpoint, capsys):
    path, root = tiny_checkpoint
    E.main(["--checkpoint", str(path), "--data", str(root), "--json", "--amp", "off", "--batch-size", "16",
            "--no-progress"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    r = json.loads(last)
    for key in ("accuracy", "top5_accuracy", "nll", "ece", "per_class_accuracy", "confusion_matrix", "n",
                "source_accuracy", "rectified", "spoiled", "global_gates", "confidence_gates", "seconds",
                "images_per_s"):
        assert key in r, key
    assert 0 <= r["accuracy"] <= 1 and r["n"] == 60
    assert set(r["per_class_accuracy"]) == set(CLASSES)
    assert set(r["confidence_gates"]["group2"]) == {"mean", "std"} and len(r["confidence_gates"]["group2"]["mean"]) == 2


def test_cli_tables(tiny_checkpoint, capsys):
    path, root = tiny_checkpoint
    E.main(["--checkpoint", str(path), "--data", str(root), "--amp", "off", "--no-progress"])
    out = capsys.readouterr().out
    assert "accuracy" in out and "rectified" in out and "confusion matrix" in out
    assert all(c in out for c in CLASSES)


def test_cli_class_mismatch_exits_2_naming_the_classes(tiny_checkpoint, tmp_path):
    """A real process: the exit code and a message, no traceback."""
    path, _ = tiny_checkpoint
    make_image_folder(tmp_path / "other", classes=("ape", "bee", "yak"), per_class=1)
    env = {**os.environ, "AR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "ar_core.evaluate", "--checkpoint", str(path), "--data",
                           str(tmp_path / "other"), "--no-progress"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().endswith("extra (in the data, unknown to the checkpoint): yak")  # ape, bee are known
    assert "missing" not in proc.stderr  # holding some of the classes only is allowed


def test_a_folder_with_some_of_the_classes_is_evaluated_on_them(tiny_checkpoint, tmp_path):
    """The images of two classes, taken out of the full folder: the same answers, the other classes n/a."""
    import shutil

    path, root = tiny_checkpoint
    model, meta = load_checkpoint(path)
    full = E.evaluate(model, D.load_image_folder(root), meta, tta="none")
    part_root = tmp_path / "part"
    kept = sorted(p.name for p in root.iterdir())[1:3]
    for name in kept:
        shutil.copytree(root / name, part_root / name)
    part = E.evaluate(model, D.load_image_folder(part_root), meta, tta="none")
    counts = {c: sum(row) for c, row in zip(full["classes"], full["confusion_matrix"])}
    assert part["n"] == sum(counts[c] for c in kept) > 0
    assert part["classes"] == full["classes"]
    for c in full["classes"]:
        assert part["per_class_accuracy"][c] == (full["per_class_accuracy"][c] if c in kept else None)
    rows = [j for j, c in enumerate(full["classes"]) if c in kept]
    assert [part["confusion_matrix"][j] for j in rows] == [full["confusion_matrix"][j] for j in rows]
    assert "n/a" in E.format_report(part)


def test_cli_corrupt_checkpoint(tiny_checkpoint, tmp_path, capsys):
    path, root = tiny_checkpoint
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one weight byte
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as e:
        E.main(["--checkpoint", str(bad), "--data", str(root), "--no-progress"])
    assert e.value.code == 2
    assert "corrupt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        E.main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--data", str(root)])
    assert e.value.code == 2 and "no checkpoint file" in capsys.readouterr().err


def test_cli_missing_data_folder(tiny_checkpoint, tmp_path, capsys):
    path, _ = tiny_checkpoint
    with pytest.raises(SystemExit) as e:
        E.main(["--checkpoint", str(path), "--data", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "no image folder" in capsys.readouterr().err


def test_cli_torchvision_uses_the_test_split(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    path, _ = tiny_checkpoint
    calls = []

    def fake_cifar(name, root, train, download=True):
        calls.append((name, root, train, download))
        labels = torch.arange(14) % 7
        return D.TensorDataset(_smooth_images(14, seed=1), labels, list(CLASSES))

    monkeypatch.setattr(D, "load_torchvision_cifar", fake_cifar)
    E.main(["--checkpoint", str(path), "--torchvision", "cifar10", "--root", str(tmp_path), "--json",
            "--amp", "off", "--no-progress"])
    assert calls == [("cifar10", str(tmp_path), False, True)]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 14

    def offline(*args, **kwargs):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(D, "load_torchvision_cifar", offline)
    with pytest.raises(SystemExit) as e:
        E.main(["--checkpoint", str(path), "--torchvision", "cifar10", "--root", str(tmp_path)])
    assert e.value.code == 2 and "cannot load cifar10" in capsys.readouterr().err


def _training_set(n=40):
    labels = torch.arange(n) % 4
    images = (torch.arange(n * 3 * 4 * 4) % 251).to(torch.uint8).view(n, 3, 4, 4)
    return D.TensorDataset(images, labels, list("abcd"))


def test_validation_split_is_the_recorded_one():
    """Stratified by class (2 of the 10 images of each), fixed by the seed: these exact images, so a
    change to the carving, which would move every recorded split, fails here."""
    ds = _training_set()
    meta = {"validation_split": {"size": 8, "seed": 3, "method": "stratified", "train_size": 32}}
    with pytest.warns(UserWarning, match="no digest"):
        val = E.validation_split(ds, meta)
    assert torch.equal(val.images, ds.images[[0, 2, 19, 23, 24, 33, 37, 38]])
    assert val.labels.tolist() == [0, 2, 3, 3, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="not the same training set"):
        E.validation_split(ds, {"validation_split": {"size": 8, "seed": 3, "train_size": 50}})
    with pytest.raises(ValueError, match="records no validation split"):
        E.validation_split(ds, {})


def test_validation_split_refuses_a_folder_whose_content_differs():
    ds = _training_set()
    split = {"size": 8, "seed": 3, "method": "stratified", "train_size": 32,
             "train_digest": D.content_digest(ds), "index_digest": D.index_digest(torch.tensor([0, 2, 19, 23, 24, 33, 37, 38]))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint with digests carves without a warning
        assert E.validation_split(ds, {"validation_split": split}).labels.tolist() == [0, 2, 3, 3, 0, 1, 1, 2]
    one_pixel = D.TensorDataset(ds.images.clone(), ds.labels, ds.classes)
    one_pixel.images[5, 0, 0, 0] += 1
    relabelled = D.TensorDataset(ds.images, ds.labels.roll(1), ds.classes)  # same images, another order of files
    renamed = D.TensorDataset(ds.images, ds.labels, list("abce"))
    for other in (one_pixel, relabelled, renamed):
        with pytest.raises(ValueError, match="content digest mismatch"):
            E.validation_split(other, {"validation_split": split})
    with pytest.raises(ValueError, match="index digest mismatch"):
        E.validation_split(ds, {"validation_split": {**split, "seed": 4}})


def test_cli_validation_split_refuses_a_changed_training_folder(tiny_checkpoint, tmp_path, capsys):
    path, root = tiny_checkpoint
    model, meta = load_checkpoint(path)
    full = D.load_image_folder(root)
    _, val_index = D.stratified_split(full.labels, 14, 0)  # per-class rounding: 15 of the 60 images
    assert len(val_index) == 15
    meta["validation_split"] = {"size": 14, "seed": 0, "method": "stratified", "train_size": 45,
                                "train_digest": D.content_digest(full), "index_digest": D.index_digest(val_index)}
    recorded = save_checkpoint(model, tmp_path / "recorded.safetensors", meta)
    r = E.main(["--checkpoint", str(recorded), "--data", str(root), "--validation-split", "--json", "--no-progress"])
    assert r["n"] == len(val_index) and r["data"].endswith("(validation split)")
    victim = sorted(root.rglob("*.png"))[7]
    from PIL import Image

    write_png(victim, 255 - np.asarray(Image.open(victim)))  # same name, other pixels
    with pytest.raises(SystemExit) as e:
        E.main(["--checkpoint", str(recorded), "--data", str(root), "--validation-split", "--no-progress"])
    assert e.value.code == 2 and "content digest mismatch" in capsys.readouterr().err
    # the analysis and the perturbation sweeps carve the split the same way, and refuse the same way
    from ar_core import analyze, perturb

    for cli in (analyze.main, perturb.main):
        with pytest.raises(SystemExit, match="content digest mismatch"):
            cli(["--checkpoint", str(recorded), "--data", str(root), "--validation-split", "--out", str(tmp_path / "o")])
