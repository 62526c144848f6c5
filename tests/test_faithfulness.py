"""Deletion/insertion curves on a model whose evidence is known by construction."""

import numpy as np
import pytest
import torch
from torch import nn

from ar_core.faithfulness import area, curves, random_saliency, removed_image


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
