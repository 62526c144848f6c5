"""Paired comparison of two checkpoints: the counts, McNemar's exact p-value, and the CLI."""

import math

import numpy as np
import pytest
import torch

import ar_core
from ar_core import data as D
from ar_core.compare import claim_verdict, disagreements, main, mcnemar_exact, paired
from ar_core import evaluate as E
from ar_core.evaluate import evaluate
from conftest import randomize_bn
from test_data import make_image_folder


@pytest.mark.parametrize("only_a, only_b, p", [
    (10, 0, 2 / 1024),                               # ten discordant images, all one way
    (3, 7, 2 * (1 + 10 + 45 + 120) / 1024),          # the binomial tail by hand
    (5, 5, 1.0), (0, 0, 1.0),
    (0, 1, 1.0),
])
def test_mcnemar_exact_matches_the_binomial_tail(only_a, only_b, p):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(p)
    assert mcnemar_exact(only_b, only_a) == pytest.approx(p)  # symmetric


def test_mcnemar_stays_finite_for_thousands_of_images():
    p = mcnemar_exact(1100, 1000)
    exact = 2 * sum(math.comb(2100, i) for i in range(1001)) / 2 ** 2100
    assert p == pytest.approx(exact, rel=1e-9) and 0.02 < p < 0.04


def test_paired_counts():
    a = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool)
    r = paired(a, b)
    assert (r["both_right"], r["only_a_right"], r["only_b_right"], r["both_wrong"]) == (1, 2, 1, 2)
    assert r["accuracy_a"] == pytest.approx(0.5) and r["accuracy_b"] == pytest.approx(2 / 6)
    assert r["mcnemar_p"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same images"):
        paired(a, b[:3])


def test_disagreements_list_exactly_one_right_and_both_wrong_differently():
    labels = np.array([0, 1, 2, 3, 0, 1, 2])
    base = np.array([0, 1, 0, 3, 1, 2, 1])   # right on 0, 1, 3
    att = np.array([0, 2, 2, 0, 1, 0, 2])    # right on 0, 2, 6
    d = disagreements(labels, base, att)
    assert list(d) == ["only the attention model right", "only the baseline right", "both wrong, different answers"]
    assert d["only the attention model right"].tolist() == [2, 6]
    assert d["only the baseline right"].tolist() == [1, 3]
    assert d["both wrong, different answers"].tolist() == [5]  # image 4: both wrong with the same answer


META = {"classes": ["a", "b", "c"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}


def _two_models(tmp_path, monkeypatch):
    """A toy folder of 24 images, and an attention model and a baseline for its three classes."""
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "toy"
    make_image_folder(folder, classes=("a", "b", "c"), per_class=8)
    paths = []
    for seed, ad in ((0, 3), (1, 0)):
        torch.manual_seed(seed)
        model = randomize_bn(ar_core.build_model(ar_core.ModelConfig(num_classes=3, depth=10, width=1,
                                                                     attention_depth=ad, attention_width=2)))
        paths.append(str(ar_core.save_checkpoint(model.eval(), tmp_path / f"m{seed}.safetensors", META)))
    return folder, paths


def test_cli_compares_two_checkpoints_image_by_image(tmp_path, monkeypatch):
    folder, paths = _two_models(tmp_path, monkeypatch)
    r = main(["--a", paths[0], "--b", paths[1], "--data", str(folder), "--tta", "none", "--json"])
    ds = D.load_image_folder(folder)
    accs = [evaluate(ar_core.load_checkpoint(p)[0], ds, META, tta="none", amp="auto")["accuracy"] for p in paths]
    assert r["n"] == 24 and r["accuracy_a"] == pytest.approx(accs[0]) and r["accuracy_b"] == pytest.approx(accs[1])
    assert r["both_right"] + r["only_a_right"] == round(accs[0] * 24)
    assert r["mcnemar_p"] == pytest.approx(mcnemar_exact(r["only_a_right"], r["only_b_right"]))
    same = main(["--a", paths[0], "--b", paths[0], "--data", str(folder), "--tta", "none"])
    assert same["only_a_right"] == same["only_b_right"] == 0 and same["mcnemar_p"] == 1.0


def test_cli_refuses_checkpoints_trained_on_other_images(tmp_path, monkeypatch):
    """Same split size and seed but another training set (content digest): not the same validation images."""
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "toy"
    make_image_folder(folder, classes=("a", "b", "c"), per_class=8)
    ds = D.load_image_folder(folder)
    _, val = D.stratified_split(ds.labels, 6, 0)
    split = {"size": 6, "seed": 0, "method": "stratified", "train_size": 18,
             "train_digest": D.content_digest(ds), "index_digest": D.index_digest(val)}
    paths = []
    for name, digest in (("a", split["train_digest"]), ("b", "0" * 64)):
        meta = {"classes": ["a", "b", "c"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
                "validation_split": {**split, "train_digest": digest}}
        model = randomize_bn(ar_core.build_model(ar_core.ModelConfig(num_classes=3, depth=10, width=1)))
        paths.append(ar_core.save_checkpoint(model.eval(), tmp_path / f"{name}.safetensors", meta))
    args = ["--data", str(folder), "--validation-split", "--tta", "none"]
    assert main(["--a", str(paths[0]), "--b", str(paths[0]), *args])["n"] == len(val)
    with pytest.raises(SystemExit, match="different validation splits"):
        main(["--a", str(paths[0]), "--b", str(paths[1]), *args])


def test_cli_predicts_in_the_precision_asked_for(tmp_path, monkeypatch):
    """--amp off gives float32 where 'auto' would run bf16 (a CPU with native bf16), as the app's data-set
    page predicts; the per-image cache keeps the two apart."""
    from ar_core import analyze as A

    folder, paths = _two_models(tmp_path, monkeypatch)
    monkeypatch.setattr(ar_core.precision, "native_bf16", lambda: True)
    seen = []
    real = A.collect
    monkeypatch.setattr(A, "collect", lambda *a, **k: (seen.append(k["amp"]), real(*a, **k))[1])
    args = ["--a", paths[0], "--b", paths[1], "--data", str(folder), "--tta", "none"]
    off = main([*args, "--amp", "off"])
    assert seen == ["off", "off"]
    main(args)
    assert seen == ["off", "off", "auto", "auto"]  # another precision: predicted again, not read from the cache
    monkeypatch.setattr(ar_core.precision, "native_bf16", lambda: False)
    assert main([*args, "--amp", "off"]) == off


def test_cli_reads_and_fills_the_per_image_cache_that_analyze_uses(tmp_path, monkeypatch):
    """compare after analyze predicts only the model analyze has not seen; a second compare predicts
    nothing; --no-cache predicts both again, with the same result."""
    from ar_core import analyze as A

    folder, paths = _two_models(tmp_path, monkeypatch)
    A.main(["--checkpoint", paths[0], "--data", str(folder), "--out", str(tmp_path / "report"),
            "--faithfulness", "0", "--tta", "flip"])
    predicted = []
    real = A.collect
    monkeypatch.setattr(A, "collect", lambda model, images, *a, **k: (predicted.append(len(images)),
                                                                      real(model, images, *a, **k))[1])
    args = ["--a", paths[0], "--b", paths[1], "--data", str(folder), "--tta", "flip"]
    first = main(args)
    assert predicted == [24]  # the baseline only: the attention model's answers came from analyze's pass
    assert main(args) == first and predicted == [24]
    assert main([*args, "--no-cache"]) == first and predicted == [24, 24, 24]
    accs = [evaluate(ar_core.load_checkpoint(p)[0], D.load_image_folder(folder), META, tta="flip")["accuracy"]
            for p in paths]
    assert (first["accuracy_a"], first["accuracy_b"]) == pytest.approx(accs)


def _pair(a, b, p):
    return {"accuracy_a": a, "accuracy_b": b, "mcnemar_p": p}


@pytest.mark.parametrize("pairs, verdict", [
    ([_pair(0.95, 0.94, 0.01), _pair(0.95, 0.945, 0.30)], "supported"),
    ([_pair(0.95, 0.94, 0.05), _pair(0.95, 0.945, 0.30)], "the paper's direction, not resolved by these images"),
    ([_pair(0.95, 0.94, 0.001), _pair(0.94, 0.945, 0.30)], "not supported here"),  # behind on one seed
    ([_pair(0.94, 0.94, 1.0)], "not supported here"),                                 # level is not ahead
])
def test_the_claim_is_read_by_the_rule_fixed_before_the_runs(pairs, verdict):
    assert claim_verdict(pairs) == verdict


def test_cli_reads_the_claim_over_several_pairs(tmp_path, monkeypatch, capsys):
    folder, (att, base) = _two_models(tmp_path, monkeypatch)
    r = main(["--a", att, att, "--b", base, base, "--data", str(folder), "--tta", "none"])
    assert len(r["pairs"]) == 2 and r["pairs"][0] == r["pairs"][1]
    assert r["pairs"][0]["attention_vs_baseline"] and r["claim"] == claim_verdict(r["pairs"])
    assert f"over 2 pairs: {r['claim']}" in capsys.readouterr().out
    assert main(["--a", base, "--b", att, "--data", str(folder), "--tta", "none"])["claim"] is None  # not A vs baseline
    with pytest.raises(SystemExit, match="give one B for each A"):
        main(["--a", att, att, "--b", base, "--data", str(folder)])


def test_cli_decodes_at_the_checkpoints_size_and_says_what_is_wrong(tmp_path, monkeypatch):
    folder, (att, base) = _two_models(tmp_path, monkeypatch)
    big = []
    for name, path in (("att64", att), ("base64", base)):
        model, _ = ar_core.load_checkpoint(path)
        big.append(str(ar_core.save_checkpoint(model, tmp_path / f"{name}.safetensors", {**META, "image_size": 64})))
    sizes = []
    real = D.load_image_folder
    monkeypatch.setattr(D, "load_image_folder", lambda root, size=32, **k: (sizes.append(size), real(root, size, **k))[1])
    r = main(["--a", big[0], "--b", big[1], "--data", str(folder), "--tta", "none"])
    assert sizes == [64] and r["n"] == 24
    ds = real(folder, 64)
    assert r["accuracy_a"] == pytest.approx(evaluate(ar_core.load_checkpoint(big[0])[0], ds, META, tta="none",
                                                     amp="auto")["accuracy"])
    with pytest.raises(SystemExit, match="take 64x64 and 32x32 images"):
        main(["--a", big[0], "--b", base, "--data", str(folder)])
    with pytest.raises(SystemExit, match=r"^error: cannot load .*nowhere"):
        main(["--a", att, "--b", base, "--data", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match=r"^error: no checkpoint file at .*missing\.safetensors"):
        main(["--a", str(tmp_path / "missing.safetensors"), "--b", base, "--data", str(folder)])
    with pytest.raises(SystemExit, match=r"^error: the checkpoint records no validation split"):
        main(["--a", att, "--b", base, "--data", str(folder), "--validation-split"])
    other = tmp_path / "other"
    make_image_folder(other, classes=("a", "b", "zebra"), per_class=2)
    with pytest.raises(SystemExit, match=r"^error: .*zebra"):
        main(["--a", att, "--b", base, "--data", str(other)])


def test_cli_compares_checkpoints_that_list_the_same_classes_in_another_order(tmp_path, monkeypatch):
    """The baseline with its classifier's rows reversed and its classes listed c, b, a answers every image as
    before: the comparison is the same, each model's labels read in its own class order."""
    folder, (att, base) = _two_models(tmp_path, monkeypatch)
    model, _ = ar_core.load_checkpoint(base)
    with torch.no_grad():
        model.backbone.fc.weight.copy_(model.backbone.fc.weight.flip(0))
        model.backbone.fc.bias.copy_(model.backbone.fc.bias.flip(0))
    reordered = str(ar_core.save_checkpoint(model, tmp_path / "reordered.safetensors",
                                            {**META, "classes": ["c", "b", "a"]}))
    args = ["--data", str(folder), "--tta", "none", "--no-cache"]
    same = main(["--a", att, "--b", base, *args])
    assert main(["--a", att, "--b", reordered, *args]) == {**same, "b": reordered}
    assert main(["--a", reordered, "--b", att, *args])["accuracy_a"] == same["accuracy_b"]


def test_cli_compares_on_a_folder_of_some_of_the_classes(tmp_path, monkeypatch):
    folder, (att, base) = _two_models(tmp_path, monkeypatch)
    part = tmp_path / "part"
    make_image_folder(part, classes=("c", "a"), per_class=3)
    r = main(["--a", att, "--b", base, "--data", str(part), "--tta", "none", "--no-cache"])
    ds = E.align_labels(D.load_image_folder(part), META["classes"], subset=True)
    accs = [evaluate(ar_core.load_checkpoint(p)[0], ds, META, tta="none")["accuracy"] for p in (att, base)]
    assert r["n"] == 6 and (r["accuracy_a"], r["accuracy_b"]) == pytest.approx(accs)
