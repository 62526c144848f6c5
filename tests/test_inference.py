"""Image decoding, fitting, ablation, filters and exports (ar_core.inference)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ar_core import inference as I


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(w=40, h=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("PNG", "P"), ("PNG", "I;16"),
                                      ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("WEBP", "RGB"), ("BMP", "RGB"),
                                      ("GIF", "P"), ("TIFF", "RGB"), ("TIFF", "F")])
def test_formats_and_modes_become_rgb(fmt, mode):
    img = _rgb().convert(mode) if mode not in ("I;16", "F") else Image.fromarray(
        (np.random.default_rng(0).random((30, 40)) * (65535 if mode == "I;16" else 1)).astype(
            np.uint16 if mode == "I;16" else np.float32))
    out = I.load_image(_encode(img, fmt), f"x.{fmt.lower()}")
    assert out.mode == "RGB" and out.size == (40, 30)


def test_exif_orientation_is_applied():
    img = _rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = I.load_image(_encode(img, "JPEG", exif=exif), "phone.jpg")
    assert out.size == (30, 40)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = I.load_image(data, "anim.gif")
    assert np.asarray(out)[0, 0].tolist() == [255, 0, 0]


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(I.load_image(_encode(img, "PNG")))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode, clear, other", [("RGB", (0, 0, 0), (9, 200, 30)), ("L", 0, 120)])
def test_a_transparent_colour_of_a_png_is_white_too(mode, clear, other):
    """PNG's tRNS chunk makes one colour of an RGB or greyscale image transparent, with no alpha channel."""
    img = Image.new(mode, (4, 4), clear)
    img.putpixel((3, 3), other)
    out = np.asarray(I.load_image(_encode(img, "PNG", transparency=clear)))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[3, 3].tolist() == (list(other) if mode == "RGB" else [other] * 3)


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image", "not an image file"),
    (_encode(_rgb(), "PNG")[:50], "truncated or damaged"),
    (_encode(Image.new("RGB", (4, 4)), "ICO"), "ICO image; supported formats"),
])
def test_bad_inputs_say_what_is_wrong(data, match):
    with pytest.raises(I.ImageError, match=match):
        I.load_image(data, "upload")


def test_huge_images_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(I, "MAX_PIXELS", 100)
    with pytest.raises(I.ImageError, match="megapixel limit"):
        I.load_image(_encode(_rgb(20, 20), "PNG"))
    monkeypatch.setattr(I, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(I.ImageError, match="MB; the limit"):
        I.load_image(_encode(_rgb(20, 20), "PNG"))


def test_fit_image_crop_and_pad():
    img = _rgb(64, 32)
    crop = I.fit_image(img, 32, "center-crop")
    assert crop.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(crop), np.asarray(img)[:, 16:48])
    pad = np.asarray(I.fit_image(img, 32, "pad"))
    assert pad.shape == (32, 32, 3)
    # a 64x32 image shrinks to 32x16 and sits in the middle rows; the rest is its mean colour
    small = np.asarray(img.resize((32, 16), Image.BICUBIC))
    np.testing.assert_array_equal(pad[8:24], small)
    fill = small.reshape(-1, 3).mean(0).astype(int)
    assert (pad[:8] == fill).all() and (pad[24:] == fill).all()
    with pytest.raises(ValueError):
        I.fit_image(img, 32, "stretch")


def test_preprocess_uses_checkpoint_normalisation():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = I.preprocess(x, {"normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}})
    assert out[0, :, 0, 0].tolist() == [2.0, 1.0, 0.5]


@pytest.fixture
def traced(tiny_model):
    with torch.inference_mode():
        return tiny_model.trace(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_ablation_with_everything_on_is_the_fusion(traced):
    out = I.ablate(traced, [True] * 4, [[True, True]] * 3)
    torch.testing.assert_close(out, traced.output)


def test_ablation_renormalises_gates(traced):
    only_net = I.ablate(traced, [False, False, False, True])
    torch.testing.assert_close(only_net, torch.log_softmax(traced.net_output, 1))
    # layer group2 with head 0 only: its hypothesis becomes head 0's, at full weight
    heads = [[True, True], [True, False], [True, True]]
    out = I.ablate(traced, [False, True, False, False], heads)
    torch.testing.assert_close(out, torch.log_softmax(traced.layers[1].head_hypotheses[:, 0], 1))
    with pytest.raises(ValueError, match="at least one source"):
        I.ablate(traced, [False] * 4)
    with pytest.raises(ValueError, match="keep at least one head"):
        I.ablate(traced, [True] * 4, [[False, False], [True, True], [True, True]])


def test_ablation_of_a_flip_trace_ablates_each_view(tiny_model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        t = tiny_model.trace(x, flip=True)
    torch.testing.assert_close(I.ablate(t, [True] * 4), t.output)
    heads = [[True, False], [True, True], [False, True]]
    want = (I.ablate(t.views[0], [True, False, True, True], heads)
            + I.ablate(t.views[1], [True, False, True, True], heads)) / 2
    torch.testing.assert_close(I.ablate(t, [True, False, True, True], heads), want)


def test_tta_follows_the_checkpoint_unless_asked(tiny_model):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    plain, flip, shift = {}, {"test_time_augmentation": "flip"}, {"test_time_augmentation": "flip-shift2"}
    with torch.inference_mode():
        want = tiny_model.trace(I.preprocess(images, plain), flip=True)
        want_shift = tiny_model.trace(I.preprocess(images, plain), flip=True, shift=2)
    got = I.inspect(tiny_model, images, flip).trace
    torch.testing.assert_close(got.output, want.output)
    assert got.augmentation == "flip" and len(got.views) == 2
    single = I.inspect(tiny_model, images, flip, tta="none").trace
    assert not single.views and single.augmentation == "none"
    assert len(I.inspect(tiny_model, images, plain, tta=True).trace.views) == 2  # the old switch still reads
    got_shift = I.inspect(tiny_model, images, shift).trace
    assert got_shift.augmentation == "flip-shift2" and len(got_shift.views) == 18
    torch.testing.assert_close(got_shift.output, want_shift.output)
    assert I.predict_all(tiny_model, images, flip)["fused"].tolist() == want.output.argmax(1).tolist()
    assert I.predict_all(tiny_model, images, shift)["fused"].tolist() == want_shift.output.argmax(1).tolist()


def test_topk_and_rectification(traced):
    classes = list("abcde")
    top = I.topk(traced.output[0], classes, 3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert top[0][2] == int(traced.output[0].argmax())
    net, fused = int(traced.net_output[0].argmax()), int(traced.output[0].argmax())
    assert I.rectification(traced, 0) == ("agrees" if net == fused else "changed")


def test_rectification_names_each_pair_of_verdicts():
    """Image i's network answer is class (1, 0, 0, 1)[i], its fused answer class (0, 1, 0, 1)[i]; the label is 0."""
    from types import SimpleNamespace

    one_hot = torch.eye(3)
    trace = SimpleNamespace(net_output=one_hot[[1, 0, 0, 1]], output=one_hot[[0, 1, 0, 1]])
    assert [I.rectification(trace, i, 0) for i in range(4)] == ["rectified", "spoiled", "both right", "both wrong"]
    assert [I.rectification(trace, i) for i in range(4)] == ["changed", "changed", "agrees", "agrees"]


def test_filter_indices():
    labels = np.array([0, 0, 1, 1, 2])
    preds = {"fused": np.array([0, 1, 1, 0, 2]), "net": np.array([1, 0, 1, 0, 0])}
    assert I.filter_indices(labels, None).tolist() == [0, 1, 2, 3, 4]
    assert I.filter_indices(labels, None, class_index=1).tolist() == [2, 3]
    assert I.filter_indices(labels, preds, outcome="correct").tolist() == [0, 2, 4]
    assert I.filter_indices(labels, preds, outcome="wrong").tolist() == [1, 3]
    assert I.filter_indices(labels, preds, outcome="rectified").tolist() == [0, 4]
    assert I.filter_indices(labels, preds, outcome="spoiled").tolist() == [1]
    with pytest.raises(ValueError, match="needs the model's predictions"):
        I.filter_indices(labels, None, outcome="wrong")


def test_predict_all_matches_trace(tiny_model):
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    meta = {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    seen = []
    preds = I.predict_all(tiny_model, images, meta, batch_size=3, progress=seen.append)
    with torch.inference_mode():
        t = tiny_model.trace(I.preprocess(images, meta))
    assert preds["fused"].tolist() == t.output.argmax(1).tolist()
    assert preds["net"].tolist() == t.net_output.argmax(1).tolist()
    assert seen[-1] == 1.0 and len(seen) == 3


def test_exports_hold_the_whole_trace(traced):
    doc = json.loads(I.trace_to_json(traced, list("abcde"), 1, {"image": "x.png"}))
    assert doc["sources"] == traced.sources and doc["image"] == "x.png"
    np.testing.assert_allclose(doc["group2/attention_maps"], traced.layers[1].attention_maps[1].numpy(), rtol=1e-6)
    npz = np.load(io.BytesIO(I.trace_to_npz(traced, 1)))
    np.testing.assert_allclose(npz["output"], traced.output[1].numpy())
    assert npz["group3__confidence_gates"].shape == (2,)
    np.testing.assert_allclose(doc["global_pre_tanh"], traced.global_pre_tanh[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(npz["group2__gate_pre_tanh"], traced.layers[1].gate_pre_tanh[1].numpy())
    assert set(I.trace_arrays(traced)) >= {"contributions", "global_gates", "group1/head_hypotheses"}


def test_inspect_runs_on_cpu_and_times_itself(tiny_model):
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    res = I.inspect(tiny_model, images, {"classes": list("abcde")})
    assert res.device == "cpu" and res.latency_ms > 0 and res.classes == list("abcde")
    assert res.trace.output.device.type == "cpu"


def test_image_digest_is_the_pixels_and_shape_and_from_hwc_round_trips():
    import numpy as np

    from ar_core.inference import from_hwc, image_digest

    hwc = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    x = from_hwc(hwc)
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.uint8
    assert torch.equal(x[0, :, 2, 5], torch.from_numpy(hwc[2, 5]))
    assert image_digest(x) == image_digest(x.clone())
    other = x.clone()
    other[0, 1, 3, 0] ^= 1
    assert image_digest(other) != image_digest(x)
    assert image_digest(x.reshape(1, 3, 6, 4)) != image_digest(x)  # same bytes, another image


@pytest.mark.parametrize("as_array", [np.asarray, torch.tensor])
def test_outcome_masks_name_each_pair_of_verdicts(as_array):
    """The four (network, fused) verdict pairs, one image each: the one definition everything counts with."""
    labels = as_array([0, 0, 0, 0])
    fused, net = as_array([0, 0, 1, 1]), as_array([0, 1, 0, 1])
    got = {k: [bool(v) for v in m] for k, m in I.outcome_masks(labels, fused, net).items()}
    assert got == {"correct": [True, True, False, False], "wrong": [False, False, True, True],
                   "rectified": [False, True, False, False], "spoiled": [False, False, True, False],
                   "network right": [True, False, True, False]}


def test_to_hwc_undoes_from_hwc_for_one_image_and_a_batch():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    batch = I.from_hwc(image)
    assert batch.shape == (1, 3, 5, 7)
    np.testing.assert_array_equal(I.to_hwc(batch[0]), image)
    np.testing.assert_array_equal(I.to_hwc(batch)[0], image)
