"""Deletion/insertion curves on a model whose evidence is known by construction."""

import numpy as np
import pytest
import torch
from torch import nn

from ar_core.faithfulness import area, curves, curves_batch, curves_for_maps, random_saliency, removed_image


class CornerModel(nn.Module):
    """Scores class 1 by the brightness of the top-left 8x8 corner only: the true evidence."""

    def forward(self, x):
        s = x[:, :, :8, :8].mean(dim=(1, 2, 3)) * 10
        return torch.log_softmax(torch.stack([torch.zeros_like(s), s], 1), 1)


def test_area_trapezoid():
    assert area([0, 0.5, 1], [1, 1, 1]) == pytest.approx(1.0)
    assert area([0, 1], [1, 0]) == pytest.approx(0.5)


def test_removed_image_modes():
    x = torch.rand(1, 3, 16, 16)
    mean = removed_image(x, "mean")
    assert torch.allclose(mean[0, :, 0, 0], x.mean(dim=(2, 3))[0])
    blur = removed_image(x, "blur")
    assert blur.shape == x.shape and blur.std() < x.std()
    with pytest.raises(ValueError):
        removed_image(x, "noise")


def test_the_true_evidence_beats_random_and_the_reverse_order():
    model = CornerModel()
    x = torch.ones(1, 3, 32, 32)
    x[:, :, :8, :8] = 2.0
    true = np.zeros((32, 32))
    true[:8, :8] = 1.0
    c_true = curves(model, x, 1, true, steps=16, mode="mean")
    c_rand = curves(model, x, 1, random_saliency((32, 32), 0), steps=16, mode="mean")
    c_worst = curves(model, x, 1, 1.0 - true, steps=16, mode="mean")
    assert c_true.deletion_area < c_rand.deletion_area < c_worst.deletion_area
    assert c_true.insertion_area > c_rand.insertion_area > c_worst.insertion_area
    assert c_true.fractions[0] == 0 and c_true.fractions[-1] == 1
    # at the ends both curves meet the unperturbed and the fully removed image
    assert c_true.deletion[0] == pytest.approx(c_true.insertion[-1])
    assert c_true.deletion[-1] == pytest.approx(c_true.insertion[0])


def test_shape_mismatch(tiny_model):
    with pytest.raises(ValueError, match="does not match"):
        curves(tiny_model, torch.zeros(1, 3, 32, 32), 0, np.zeros((8, 8)))


def test_curves_on_the_attention_model(tiny_model):
    """Each point is the class probability of the image with the first pixels of the order removed."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sal = random_saliency((32, 32), 1)
    c = curves(tiny_model, x, 2, sal, steps=8)
    assert len(c.deletion) == len(c.insertion) == 9
    prob = lambda img: float(torch.softmax(tiny_model(img), 1)[0, 2])  # noqa: E731
    gone = removed_image(x, "blur")
    order = np.argsort(-sal.ravel(), kind="stable")
    mask = torch.zeros(32 * 32, dtype=torch.bool)
    mask[torch.from_numpy(order[:3 * 32 * 32 // 8])] = True  # step 3 of 8: 384 pixels
    mask = mask.view(1, 1, 32, 32)
    with torch.no_grad():
        want = [prob(x), prob(torch.where(mask, gone, x)), prob(torch.where(mask, x, gone)), prob(gone)]
    got = [c.deletion[0], c.deletion[3], c.insertion[3], c.deletion[-1]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert c.insertion[0] == pytest.approx(want[-1], rel=1e-4) and c.insertion[-1] == pytest.approx(want[0], rel=1e-4)
    assert len(set(np.round(c.deletion, 6))) > 2  # the curve moves
    assert ((0 <= c.deletion) & (c.deletion <= 1)).all()


# ---------------------------------------------------------------- the batched path equals the per-image one

def _reference_curves(model, x, target, saliency, steps=16, mode="blur"):
    """The per-image algorithm the batched one replaced: one batch of 2·(steps+1) images per map."""
    _, _, h, w = x.shape
    order = torch.from_numpy(np.argsort(-np.asarray(saliency, dtype=np.float64).ravel(), kind="stable"))
    gone = removed_image(x, mode)
    counts = np.linspace(0, h * w, steps + 1).round().astype(int)
    masks = torch.zeros(steps + 1, h * w, dtype=torch.bool)
    for i, n in enumerate(counts):
        masks[i, order[:n]] = True
    masks = masks.view(steps + 1, 1, h, w)
    with torch.no_grad():
        batch = torch.cat([torch.where(masks, gone, x), torch.where(masks, x, gone)])
        probs = torch.softmax(model(batch).float(), dim=1)[:, target].numpy()
    return counts / (h * w), probs[:steps + 1], probs[steps + 1:]


def _reference_faithfulness(model, images, meta, indices, methods, steps=16):
    """Per image: a trace, each method's map (Captum on one image), then each map's curves alone."""
    from ar_core.attribution import attribute, layer_attention, private_copy
    from ar_core.inference import preprocess

    net = private_copy(model).float().to(memory_format=torch.contiguous_format)
    out = {f"{m}/{k}": np.full(len(indices), np.nan) for m in methods for k in ("deletion", "insertion")}
    for j, i in enumerate(indices):
        x = preprocess(images[i:i + 1], meta)
        with torch.no_grad():
            t = net.trace(x)
        target = int(t.output[0].argmax())
        for method in methods:
            if method == "attention":
                maps = [layer_attention(t, 0, l, x.shape[-1]) for l in range(len(t.layers))]
                sal = sum(float(t.global_gates[0, l]) * m for l, m in enumerate(maps))
            elif method == "random":
                sal = random_saliency(x.shape[-2:], seed=int(i))
            else:
                sal = attribute(net, x, target, method, ig_steps=16, copy_model=False).map
            fr, dele, ins = _reference_curves(net, x, target, sal, steps)
            out[f"{method}/deletion"][j] = area(fr, dele)
            out[f"{method}/insertion"][j] = area(fr, ins)
    return out


def test_batched_curves_equal_the_per_image_algorithm(tiny_model):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    sal = torch.rand(3, 2, 32, 32).numpy()
    sal[0, 1] = 0.0  # a constant map: the order is the pixel position
    targets = [0, 3, 4]
    fractions, deletion, insertion = curves_batch(tiny_model, x, targets, sal, steps=8, mode="blur", batch_size=7)
    for b in range(3):
        for m in range(2):
            fr, dele, ins = _reference_curves(tiny_model, x[b:b + 1], targets[b], sal[b, m], steps=8)
            np.testing.assert_allclose(fractions, fr)
            np.testing.assert_allclose(deletion[b, m], dele, atol=1e-5)
            np.testing.assert_allclose(insertion[b, m], ins, atol=1e-5)
    many = curves_for_maps(tiny_model, x[:1], 0, {"a": sal[0, 0], "b": sal[0, 1]}, steps=8)
    np.testing.assert_allclose(many["b"].deletion, deletion[0, 1], atol=1e-6)


def test_batched_analysis_equals_the_per_image_algorithm(tiny_model):
    from ar_core.analyze import FAITHFULNESS_METHODS, faithfulness

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=g)
    meta = {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    indices = [5, 0, 3, 6, 1]
    new = faithfulness(tiny_model, images, meta, indices, FAITHFULNESS_METHODS, batch=2, amp="off")
    old = _reference_faithfulness(tiny_model, images, meta, indices, FAITHFULNESS_METHODS)
    assert set(new) == set(old) == {f"{m}/{k}" for m in FAITHFULNESS_METHODS for k in ("deletion", "insertion")}
    for key in old:
        assert not np.isnan(old[key]).any()
        # 1e-4: a batched Grad-CAM map may differ from the per-image one in its last bits (AVX2 kernels),
        # which can swap two nearly tied pixels in the order and move an area by ~1e-5.
        np.testing.assert_allclose(new[key], old[key], atol=1e-4, err_msg=key)
    # the maps differ, so the comparison is not of one number repeated
    assert len({round(float(old[f"{m}/deletion"][0]), 5) for m in FAITHFULNESS_METHODS}) >= 4


def test_batched_curves_refuse_mismatched_maps(tiny_model):
    with pytest.raises(ValueError, match=r"do not match 2 images of 32x32; expected \(2, maps, 32, 32\)"):
        curves_batch(tiny_model, torch.zeros(2, 3, 32, 32), [0, 1], np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        curves_batch(tiny_model, torch.zeros(1, 3, 32, 32), [0], np.zeros((1, 1, 32, 32)), steps=0)


def test_curves_in_bf16_stay_close_to_float32(tiny_model):
    """The analysis runs the curves' passes under the precision policy (bf16 on this kind of CPU): the
    areas move by bf16 rounding only, and the explained class and the maps stay those of float32."""
    from ar_core.analyze import faithfulness

    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    meta = {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    methods = ["attention", "saliency", "random"]
    fp32 = faithfulness(tiny_model, images, meta, range(6), methods, amp="off")
    bf16 = faithfulness(tiny_model, images, meta, range(6), methods, amp="on")
    assert any(not np.array_equal(fp32[k], bf16[k]) for k in fp32)  # the passes did run in bf16
    for key in fp32:
        np.testing.assert_allclose(bf16[key], fp32[key], atol=0.02, err_msg=key)
