"""The guided walk's narrative from a trace, and the photo region behind the model input."""

import numpy as np
import pytest
import torch
from PIL import Image

from ar_core import walk as W
from ar_core.inference import fit_image, inspect
from ar_core.photo import model_view

CLASSES = list("abcde")


def test_where_names_the_heaviest_region_and_its_focus():
    m = torch.zeros(8, 8)
    m[0, 0] = 1.0
    assert W.where(m).startswith("the top left (sharply focused")
    m = torch.ones(9, 9)
    m[3:6, 6:9] += 0.2
    assert W.where(m).startswith("the right (spread out")
    m = torch.zeros(9, 9)
    m[4, 4] = 1.0
    assert W.where(m).startswith("the centre")


def _trace(tiny_model, seed=0):
    x = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return inspect(tiny_model, x, {"classes": CLASSES}, tta="none").trace


def test_walk_tells_the_images_own_numbers(tiny_model):
    t = _trace(tiny_model)
    steps = W.walk(t, CLASSES)
    assert [s.figure for s in steps] == ["prediction", "layer", "layer", "layer", "global_gates", "contributions"]
    net = CLASSES[int(t.net_output[0].argmax())]
    assert f"says **{net}**" in steps[0].text
    g2 = t.layers[1]
    best = int(g2.confidence_gates[0].argmax())
    assert f"trusts head {best + 1} most" in steps[2].text and steps[2].args == {"layer": 1}
    for k in range(2):
        c = CLASSES[int(g2.head_hypotheses[0, k].argmax())]
        assert f"head {k + 1} looked at" in steps[2].text and f"believes **{c}**" in steps[2].text
        assert f"trust {float(g2.confidence_gates[0, k]):.2f}" in steps[2].text
    top = int(t.global_gates[0].argmax())
    assert f"{float(t.global_gates[0, top]):.2f}" in steps[4].text.split(":", 1)[1].split(",")[0]
    fused, netj = int(t.output[0].argmax()), int(t.net_output[0].argmax())
    assert steps[5].args["classes"][0] == fused
    verdict = "confirmed" if fused == netj else "changed"
    assert f"**{verdict}**" in steps[5].text
    # with a label: the story says whether fusion rectified, spoiled, or was right or wrong
    assert "**rectified**" in W.walk(t, CLASSES, label=fused)[-1].text or fused == netj
    wrong = (fused + 1) % 5 if (fused + 1) % 5 != netj else (fused + 2) % 5
    assert "is wrong" in W.walk(t, CLASSES, label=wrong)[-1].text


def test_walk_notes_a_saturated_gate(tiny_model):
    t = _trace(tiny_model).map(lambda v: v.clone())  # a writable copy
    best = int(t.layers[0].confidence_gates[0].argmax())
    assert "saturated here" not in W.walk(t, CLASSES)[1].text or abs(float(t.layers[0].gate_pre_tanh[0, best])) > 2
    t.layers[0].gate_pre_tanh[0, best] = 3.0
    assert "saturated here (input +3.0)" in W.walk(t, CLASSES)[1].text


def test_a_baseline_walk_has_no_attention_steps():
    from ar_core import ModelConfig, build_model

    model = build_model(ModelConfig(num_classes=5, depth=10, width=1, attention_depth=0)).eval()
    t = inspect(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), {"classes": CLASSES}, tta="none").trace
    steps = W.walk(t, CLASSES)
    assert len(steps) == 2 and "baseline" in steps[1].text


def test_model_view_is_the_region_the_model_sees():
    rng = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (60, 100, 3), generator=rng, dtype=torch.uint8).numpy()
    img = Image.fromarray(arr)
    crop = model_view(img, "center-crop", size=32)
    assert crop.size == (60, 60)
    assert np.array_equal(np.asarray(crop), arr[:, 20:80])
    # the same region, downscaled, is what fit_image gives the model
    small = np.asarray(crop.resize((32, 32), Image.BICUBIC)).astype(int)
    assert abs(small - np.asarray(fit_image(img, 32, "center-crop")).astype(int)).max() == 0
    # pad: the photo sits where the model input puts it, to the model pixel (rounding included): shrunk to the
    # input's size, the view is the model input (centring the photo on its own square missed by up to a pixel)
    for w, h in ((100, 60), (97, 50), (50, 97), (300, 200), (1000, 333)):
        ramp = np.zeros((h, w, 3), np.uint8)
        ramp[..., 0], ramp[..., 1], ramp[..., 2] = np.linspace(0, 255, w)[None], np.linspace(0, 255, h)[:, None], 255
        ramp = Image.fromarray(ramp)
        padded = model_view(ramp, "pad", size=32)
        assert padded.width == padded.height >= max(w, h) or padded.width == 512
        shrunk = np.asarray(padded.resize((32, 32), Image.BOX)).astype(float)
        assert np.abs(shrunk - np.asarray(fit_image(ramp, 32, "pad"))).mean() < 0.5, (w, h)
    # the band around the photo has the colour the model input is padded with (thin stripes: a mean
    # that depends on how the image is shrunk)
    striped = np.zeros((60, 100, 3), np.uint8)
    striped[:, ::7], striped[::5, :, 1] = 255, 200
    striped = Image.fromarray(striped)
    for size in (32, 48):
        assert np.asarray(model_view(striped, "pad", size=size))[0, 0].tolist() == \
            np.asarray(fit_image(striped, size, "pad"))[0, 0].tolist()
    assert model_view(Image.new("RGB", (2000, 1500)), "center-crop", max_side=512, size=32).size == (512, 512)
    # a strip within the pixel limit is drawn small from the start (a 100,000-pixel square would take 30 GB)
    strip = Image.new("RGB", (1, 100_000), (200, 10, 10))
    assert model_view(strip, "pad", max_side=512, size=32).size == (512, 512)
    with pytest.raises(ValueError):
        model_view(img, "stretch", size=32)
