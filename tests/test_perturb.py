"""Perturbations on hand-made images, and the sweep CLI on a tiny ImageFolder."""

import json

import pytest
import torch

import ar_core
from ar_core import perturb as P
from conftest import randomize_bn
from test_data import make_image_folder


def _img(seed=0):
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_occlude_clips_and_fills():
    img = _img()
    out = P.occlude(img, 28, -2, 8, value=7)
    assert (out[:, 0:6, 28:32] == 7).all() and torch.equal(out[:, 6:, :], img[:, 6:, :])
    assert torch.equal(P.occlude(img, 0, 0, 0), img)


def test_shift_moves_content():
    img = _img()
    out = P.shift(img, 3, -2)
    assert torch.equal(out[:, 0:30, 3:], img[:, 2:32, 0:29])
    assert torch.equal(P.shift(img, 0, 0), img)


def test_adjust_and_noise():
    img = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    assert (P.adjust(img, brightness=0.1) == 126).all()  # 100 + 25.5, rounded
    assert torch.equal(P.adjust(img, contrast=3.0), img)  # a flat image has no contrast to scale
    assert torch.equal(P.add_noise(img, 0.1, seed=1), P.add_noise(img, 0.1, seed=1))
    assert not torch.equal(P.add_noise(img, 0.1, seed=1), img)


def test_clutter_places_the_shrunken_object_on_other_images():
    img = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    others = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
    out = P.clutter(img, others, 0.5, seed=3)
    assert out.shape == img.shape
    assert int((out == 255).all(0).sum()) == 16 * 16  # the object, a quarter of the area
    assert int((out == 0).all(0).sum()) == 32 * 32 - 16 * 16
    assert torch.equal(P.clutter(img, others, 1.0), img)
    with pytest.raises(ValueError):
        P.clutter(img, others, 0)


def test_sweep_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    make_image_folder(root, ("a", "b"), per_class=3)
    paths = {}
    for name, ad in (("att", 3), ("base", 0)):
        torch.manual_seed(0)
        m = randomize_bn(ar_core.build_model(ar_core.ModelConfig(num_classes=2, depth=10, width=1,
                                                                 attention_depth=ad, attention_width=2))).eval()
        paths[name] = ar_core.save_checkpoint(m, tmp_path / f"{name}.safetensors", {"classes": ["a", "b"]})
    out = tmp_path / "out"
    r = P.main(["--checkpoint", str(paths["att"]), "--baseline", str(paths["base"]), "--data", str(root),
                "--n", "6", "--out", str(out)])
    assert r["n"] == 6 and len(r["clutter"]["attention"]) == len(r["clutter"]["scales"])
    assert set(r["occlusion"]) == {"sizes", "attention", "baseline"}
    assert json.loads((out / "perturbation.json").read_text()) == r
    assert (out / "perturbation.png").stat().st_size > 1000
