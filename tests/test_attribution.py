"""Captum attributions of the fused output and the agreement scores."""

import numpy as np
import pytest
import torch

from ar_core import ModelConfig, build_model
from ar_core.attribution import (METHODS, agreement, attribute, compare_maps, gated_attention, layer_attention,
                                 spearman, top_overlap)


@pytest.fixture
def x():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_an_input_sized_map(tiny_model, x, method):
    a = attribute(tiny_model, x, target=2, method=method, ig_steps=8)
    assert a.map.shape == (32, 32) and np.isfinite(a.map).all() and (a.map >= 0).all()
    assert a.method == method and a.target == 2 and a.seconds >= 0


def test_integrated_gradients_is_the_path_integral_of_the_gradient_from_zero(tiny_model, x):
    """IG written out: x · Σ_i w_i ∂score/∂x at α_i·x, with Captum's default Gauss-Legendre nodes α_i and
    weights w_i on [0, 1] and the all-zero baseline; |·| summed over RGB. Completeness ties the reference to
    that path: its signed sum is score(x) − score(0) within 10 %, as the ReLU network's gradient jumps
    along the path and 16 nodes leave a quadrature error (about 6 % here)."""
    nodes, weights = np.polynomial.legendre.leggauss(16)
    path = torch.cat([float(a) * x for a in (nodes + 1) / 2]).requires_grad_(True)
    grad, = torch.autograd.grad(tiny_model(path)[:, 2].sum(), path)
    signed = x[0] * (torch.tensor(weights / 2, dtype=torch.float32).view(-1, 1, 1, 1) * grad).sum(0)
    with torch.no_grad():
        gap = float(tiny_model(x)[0, 2] - tiny_model(torch.zeros_like(x))[0, 2])
    assert abs(float(signed.sum()) - gap) < 0.1 * abs(gap)
    got = attribute(tiny_model, x, 2, "integrated_gradients", ig_steps=16).map
    np.testing.assert_allclose(got, signed.abs().sum(0).numpy(), rtol=1e-4, atol=1e-7)


def test_saliency_is_the_gradient_of_the_fused_score(tiny_model, x):
    xi = x.clone().requires_grad_(True)
    tiny_model(xi)[0, 2].backward()
    expected = xi.grad[0].abs().sum(0).numpy()
    np.testing.assert_allclose(attribute(tiny_model, x, 2, "saliency").map, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layer", ["group1", "group2", "group3", None])
def test_gradcam_on_each_attended_layer(tiny_model, x, layer):
    """Grad-CAM written out: ReLU(Σ_c mean_xy(∂score/∂A_c) · A_c) on the layer, upsampled bilinearly."""
    import copy

    import torch.nn.functional as F

    net = copy.deepcopy(tiny_model)
    module = net.feature_module(layer or "last")
    kept = {}
    module.register_forward_hook(lambda m, i, out: kept.update(A=out) or out.retain_grad())
    net(x)[0, 1].backward()
    A, grad = kept["A"], kept["A"].grad
    cam = (grad.mean(dim=(2, 3), keepdim=True) * A).sum(1, keepdim=True).clamp(min=0)
    want = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    got = attribute(tiny_model, x, 1, "gradcam", layer=layer).map
    assert got.shape == (32, 32) and want.max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_gradcam_on_a_torchvision_stage():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3, attention_depth=1)).eval()
    assert attribute(model, torch.randn(1, 3, 64, 64), 0, "gradcam", layer="layer3").map.shape == (64, 64)


def test_noise_tunnel_is_the_mean_saliency_over_noisy_copies(tiny_model, x):
    """SmoothGrad written out: the mean over 12 copies x + N(0, σ²) of |∂score/∂x|, summed over RGB, with σ
    15 % of the input's range. The copies come from a fixed seed: the same map every time, and the caller's
    random stream is left where it was. 12 samples in batches of 8 also cover the smaller last batch."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    got = attribute(tiny_model, x, 2, "saliency", noise_tunnel=True, nt_samples=12).map
    assert torch.equal(torch.random.get_rng_state(), before)
    np.testing.assert_array_equal(got, attribute(tiny_model, x, 2, "saliency", noise_tunnel=True, nt_samples=12).map)
    sigma = 0.15 * float(x.max() - x.min())
    assert sigma > 0.5  # a normalised image spans several units: the noise is not the 0.15 of a [0, 1] image
    noisy = (x + sigma * torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    grad, = torch.autograd.grad(tiny_model(noisy)[:, 2].sum(), noisy)
    np.testing.assert_allclose(got, grad.abs().sum(1).mean(0).numpy(), rtol=1e-5, atol=1e-8)
    assert not np.allclose(got, attribute(tiny_model, x, 2, "saliency").map, rtol=0.05)  # the noise matters


def test_smoothgrad_of_a_batch_is_each_image_on_its_own(tiny_model):
    """An image's SmoothGrad map does not depend on the other images of its batch (noise level, noisy copies)."""
    from ar_core.attribution import attribute_batch

    scale = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)  # unequal ranges: a batch-wide noise level would differ
    xs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * scale
    both = attribute_batch(tiny_model, xs, [1, 2], "saliency", noise_tunnel=True)
    for i, target in enumerate([1, 2]):
        alone = attribute_batch(tiny_model, xs[i:i + 1], [target], "saliency", noise_tunnel=True)
        np.testing.assert_allclose(both[i], alone[0], rtol=1e-5, atol=1e-8)


def test_the_shared_model_is_never_hooked(tiny_model, x):
    attribute(tiny_model, x, 0, "gradcam")
    attribute(tiny_model, x, 0, "integrated_gradients", ig_steps=4)
    for m in tiny_model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in tiny_model.parameters())


def test_bad_requests(tiny_model, x):
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(tiny_model, x, 0, "lime")
    with pytest.raises(ValueError, match="NoiseTunnel .* not 'gradcam'"):
        attribute(tiny_model, x, 0, "gradcam", noise_tunnel=True)  # it was ignored without a word
    with pytest.raises(ValueError, match="one image"):
        attribute(tiny_model, torch.cat([x, x]), 0, "saliency")


def test_layer_attention_is_the_gated_mix_of_heads(tiny_model, x):
    with torch.no_grad():
        t = tiny_model.trace(x)
    lt = t.layers[1]
    expected = sum(float(lt.confidence_gates[0, k]) * lt.attention_maps[0, k] for k in range(2))
    np.testing.assert_allclose(layer_attention(t, 0, 1), expected.numpy(), rtol=1e-5)
    up = layer_attention(t, 0, 1, size=32)
    assert up.shape == (32, 32)
    assert abs(up.sum() / 4 - 1.0) < 0.05  # a 16x16 distribution upsampled 2x keeps its mass


def test_agreement_scores():
    a = np.arange(100, dtype=float).reshape(10, 10)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones_like(a)))
    assert top_overlap(a, a) == 1.0
    assert top_overlap(a, -a) == 0.0
    b = a.copy()
    b.ravel()[:50] = 0  # ties share a rank
    assert 0 < spearman(a, b) < 1
    scores = agreement(a, a)
    assert scores == {"spearman": pytest.approx(1.0), "top20_overlap": 1.0}
    with pytest.raises(ValueError, match="shape"):
        agreement(a, a[:5])


def test_gated_attention_weighs_each_layer_by_its_global_gate(tiny_model, x):
    with torch.no_grad():
        t = tiny_model.trace(x)
    want = sum(float(t.global_gates[0, l]) * layer_attention(t, 0, l, 32) for l in range(3))
    got = gated_attention(t, 0, 32)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (32, 32) and not np.allclose(got, layer_attention(t, 0, 2, 32))


def test_compare_maps_are_each_models_gradcam_and_the_gated_attention(tiny_model, x):
    torch.manual_seed(1)
    base = build_model(ModelConfig(num_classes=tiny_model.config.num_classes, depth=10, width=1,
                                   attention_depth=0)).eval()
    with torch.no_grad():
        tb, ta = base.trace(x), tiny_model.trace(x)
    maps = compare_maps(base, tb, x, tiny_model, ta, x)
    assert list(maps) == ["baseline: Grad-CAM", "attention: gated attention", "attention: Grad-CAM"]
    np.testing.assert_allclose(maps["baseline: Grad-CAM"], attribute(base, x, int(tb.output.argmax()), "gradcam").map)
    np.testing.assert_allclose(maps["attention: gated attention"], gated_attention(ta, 0, 32))
    np.testing.assert_allclose(maps["attention: Grad-CAM"],
                               attribute(tiny_model, x, int(ta.output.argmax()), "gradcam").map)
    assert not np.allclose(maps["baseline: Grad-CAM"], maps["attention: Grad-CAM"])


def test_occlusion_is_the_mean_score_drop_of_the_windows_covering_a_pixel(tiny_model, x):
    """Occlusion written out: every 4x4 window (stride 2) set to 0, the fused score's drop shared by
    the pixels it covers and averaged over the windows covering each pixel; |·| summed over RGB."""
    starts = range(0, 32 - 4 + 1, 2)
    batch = []
    for i in starts:
        for j in starts:
            occluded = x.clone()
            occluded[..., i:i + 4, j:j + 4] = 0
            batch.append(occluded)
    with torch.no_grad():
        drops = tiny_model(x)[0, 2] - tiny_model(torch.cat(batch))[:, 2]
    total, count = torch.zeros(32, 32), torch.zeros(32, 32)
    for n, (i, j) in enumerate((i, j) for i in starts for j in starts):
        total[i:i + 4, j:j + 4] += drops[n]
        count[i:i + 4, j:j + 4] += 1
    want = 3 * (total / count).abs()
    got = attribute(tiny_model, x, 2, "occlusion").map
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_unit_range_rescales_each_map_on_its_own():
    from ar_core.attribution import unit_range

    maps = np.array([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]])  # a ramp and a constant map
    np.testing.assert_allclose(unit_range(maps), [[[0, 0.25], [0.5, 1]], [[0, 0], [0, 0]]])
