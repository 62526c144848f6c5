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


def _accuracy(model, meta, images, labels):
    """Fused accuracy by hand: one forward pass per image (the test checkpoints record no test-time views)."""
    with torch.no_grad():
        return float((model(ar_core.inference.preprocess(images, meta)).argmax(1) == labels).double().mean())


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
    assert r["test_time_augmentation"] == {"attention": "none", "baseline": "none"}  # as the checkpoints record
    # Every point re-computed here with the sweep's randomness: the CLI's subset (seed 0) in its order, then
    # the sweep's generator (seed 0) draws the clutter pool's order and the squares' centres; image i's
    # clutter is seeded by i. Scale 1 and a 0-pixel square leave the images as they are.
    ds = ar_core.data.load_image_folder(root)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    images, labels = ds.images[idx], ds.labels[idx]
    g = torch.Generator().manual_seed(0)
    others = images[torch.randperm(len(idx), generator=g)]
    centres = torch.stack([torch.randint(0, 32, (len(idx),), generator=g) for _ in range(2)], 1)  # x, then y
    perturbed = {"clutter": lambda s: [P.clutter(img, others, s, seed=i) for i, img in enumerate(images)],
                 "occlusion": lambda k: [P.occlude(img, int(c[0]) - k // 2, int(c[1]) - k // 2, k)
                                         for img, c in zip(images, centres)]}
    moved = set()
    for name, key in (("att", "attention"), ("base", "baseline")):
        model, meta = ar_core.load_checkpoint(paths[name])
        plain = _accuracy(model, meta, images, labels)
        assert r["clutter"]["scales"][0] == 1.0 and r["occlusion"]["sizes"][0] == 0
        assert r["clutter"][key][0] == r["occlusion"][key][0] == pytest.approx(plain), key
        for kind, axis in (("clutter", "scales"), ("occlusion", "sizes")):
            for s, reported in zip(r[kind][axis][1:], r[kind][key][1:]):
                want = _accuracy(model, meta, torch.stack(perturbed[kind](s)), labels)
                assert reported == pytest.approx(want), (key, kind, s)
                moved |= {kind} if want != plain else set()
    assert moved == {"clutter", "occlusion"}  # each sweep moves off the plain accuracy somewhere: the check bites
    assert json.loads((out / "perturbation.json").read_text()) == r
    assert (out / "perturbation.png").stat().st_size > 1000


def test_own_tiles_are_the_image_shuffled_at_any_size():
    for h, w in ((32, 32), (48, 64), (30, 30)):
        img = torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(h))
        img = img.to(torch.uint8)
        out = P.own_tiles(img, seed=0)[0]
        th, tw = h // 4, w // 4
        assert out.shape == img.shape and not torch.equal(out, img)
        tiles = lambda t: sorted(t[:, r * th:(r + 1) * th, c * tw:(c + 1) * tw].flatten().tolist()  # noqa: E731
                                 for r in range(4) for c in range(4))
        assert tiles(out) == tiles(img)  # the same 16 tiles, moved
        assert torch.equal(out[:, 4 * th:], img[:, 4 * th:]) and torch.equal(out[:, :, 4 * tw:], img[:, :, 4 * tw:])


def test_apply_composes_the_perturbations_in_order():
    img = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    p = P.Perturbation(occlusion=(10, 20, 16), shift=(3, -2), clutter_scale=0.5, noise=0.05, brightness=0.1,
                       contrast=1.2, seed=4)
    want = P.occlude(img, 10, 20, 16)
    want = P.shift(want, 3, -2)
    want = P.clutter(want, P.own_tiles(want, 4), 0.5, seed=4)
    want = P.adjust(P.add_noise(want, 0.05, seed=4), 0.1, 1.2)
    assert torch.equal(P.apply(img, p), want)
    assert torch.equal(P.apply(img, P.Perturbation()), img)
    # other images of another size are resized to the image's before their patches are cut
    others = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    out = P.apply(img, P.Perturbation(clutter_scale=0.5), others)
    assert out.shape == img.shape and not torch.equal(out, P.apply(img, P.Perturbation(clutter_scale=0.5)))


def test_occlusion_centres_span_both_axes_of_a_non_square_image():
    # A wide image: x must reach past the height, y must stay inside it (x once ran over [0, width) on both axes).
    c = P.occlusion_centres(4000, 8, 40, torch.Generator().manual_seed(0))
    assert c.shape == (4000, 2)
    assert int(c[:, 0].min()) == 0 and int(c[:, 0].max()) == 39
    assert int(c[:, 1].min()) == 0 and int(c[:, 1].max()) == 7


def test_sweep_with_one_augmentation_for_both_models():
    """--tta flip: every point is the accuracy of the mean log-score over each perturbed image and its mirror.
    Labels are the single view's answers, so an unmirrored sweep would score 1 where this one does not."""
    torch.manual_seed(1)
    model = randomize_bn(ar_core.build_model(ar_core.ModelConfig(num_classes=3, depth=10, width=1,
                                                                 attention_depth=3, attention_width=2))).eval()
    meta = {"classes": ["a", "b", "c"], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    g = torch.Generator().manual_seed(1)
    colour, power = torch.rand(24, 3, 1, 1, generator=g), 4 * torch.rand(24, 1, 1, 1, generator=g)
    ramps = 255 * colour * torch.linspace(0, 1, 32).view(1, 1, 1, 32).pow(power)  # left-right asymmetric images
    images = ramps.expand(24, 3, 32, 32).to(torch.uint8)
    with torch.no_grad():
        x = ar_core.inference.preprocess(images, meta)
        labels, flip = model(x).argmax(1), (model(x) + model(x.flip(-1))).argmax(1)
    want = float((flip == labels).double().mean())
    assert want < 1
    r = P.sweep({"attention": (model, meta)}, images, labels, clutter_scales=(1.0,), occlusion_sizes=(0, 8),
                tta="flip")
    assert r["test_time_augmentation"] == {"attention": "flip"}
    assert r["clutter"]["attention"] == [pytest.approx(want)] and r["occlusion"]["attention"][0] == pytest.approx(want)
