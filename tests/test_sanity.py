"""Sanity checks by cascading randomisation: SSIM, the cascade's stages, and the scores it produces."""

import math

import numpy as np
import pytest
import torch

from ar_core import ModelConfig, build_model
from ar_core import sanity as S
from conftest import randomize_bn


def _x(seed=0):
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert S.ssim(a, a) == pytest.approx(1.0)
    # constant maps: only the luminance term is left, (2 μa μb + C1) / (μa² + μb² + C1)
    c1 = 0.01 ** 2
    assert S.ssim(np.full((16, 16), 0.2), np.full((16, 16), 0.6)) == pytest.approx((0.24 + c1) / (0.40 + c1))
    assert S.ssim(a, 1 - a) < -0.5  # inverted structure
    noisy = [S.ssim(a, np.clip(a + s * rng.standard_normal(a.shape), 0, 1)) for s in (0.05, 0.2, 0.5)]
    assert 1 > noisy[0] > noisy[1] > noisy[2]
    assert S.ssim(a, a.T) == pytest.approx(S.ssim(a.T, a))
    with pytest.raises(ValueError, match="differ in shape"):
        S.ssim(a, a[:4])


def test_similarity_rescales_and_flags_constant_maps():
    a = np.arange(16.0).reshape(4, 4)
    assert S.similarity(a, 3 * a + 7) == {"spearman": pytest.approx(1.0), "ssim": pytest.approx(1.0)}
    assert math.isnan(S.similarity(a, np.zeros((4, 4)))["spearman"])


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}


def test_cascade_randomises_from_the_output_side_and_leaves_the_model_alone(tiny_model):
    before = _params(tiny_model)
    cascade = S.randomized_cascade(tiny_model, seed=0)
    assert [name for name, _ in cascade] == ["original", "gates & heads", "group3", "group2", "group1 & stem"]
    for k, v in _params(tiny_model).items():
        assert torch.equal(v, before[k]), f"{k} of the given model changed"
    changed = []
    for _, net in cascade:
        p = _params(net)
        changed.append({k for k in before if not torch.equal(p[k], before[k])})
    assert changed[0] == set()
    assert {k.split(".")[0] for k in changed[1]} == {"attention", "global_gate", "backbone"}
    assert all(k.startswith(("attention.", "global_gate.", "backbone.fc.")) for k in changed[1])
    assert any(k.startswith("backbone.groups.2.") for k in changed[2] - changed[1])
    assert not any(k.startswith("backbone.groups.1.") for k in changed[2])
    assert all(k.startswith("backbone.groups.1.") for k in changed[3] - changed[2])
    assert changed[4] == set(before)  # in the end nothing of the trained model is left
    again = S.randomized_cascade(tiny_model, seed=0)
    other = S.randomized_cascade(tiny_model, seed=1)
    k = "backbone.groups.0.0.conv1.weight"
    assert torch.equal(_params(again[4][1])[k], _params(cascade[4][1])[k])
    assert not torch.equal(_params(other[4][1])[k], _params(cascade[4][1])[k])


def test_a_map_that_ignores_the_weights_fails_the_check(tiny_model):
    """The point of the check: a map computed from the input alone stays identical at every stage."""
    edges = lambda net, x, target: x[0].abs().sum(0).numpy()  # noqa: E731
    r = S.sanity_check(tiny_model, _x(), methods=["attention", "saliency", "edges"], custom={"edges": edges})
    assert r.stages[0] == "original" and len(r.stages) == 5
    with torch.no_grad():
        assert r.target == int(tiny_model(_x())[0].argmax()) == r.predictions[0]
    for m in ("attention", "saliency", "edges"):
        assert r.scores[m]["spearman"][0] == pytest.approx(1.0) and r.scores[m]["ssim"][0] == pytest.approx(1.0)
        assert len(r.maps[m]) == 5 and r.maps[m][0].shape == (32, 32)
    assert r.scores["edges"]["spearman"] == pytest.approx([1.0] * 5)
    assert r.scores["attention"]["spearman"][1] < 0.9  # new attention heads look elsewhere
    assert r.scores["saliency"]["spearman"][-1] < 0.9
    assert "still resembles" in S.verdict(r.scores["edges"])
    assert "no longer resembles" in S.verdict({"spearman": [1.0, 0.1], "ssim": [1.0, 0.05]})
    assert "constant" in S.verdict({"spearman": [1.0, float("nan")], "ssim": [1.0, 0.0]})


def test_baseline_cascade_and_its_errors():
    torch.manual_seed(0)
    base = randomize_bn(build_model(ModelConfig(num_classes=5, depth=10, width=1, attention_depth=0))).eval()
    assert [n for n, _ in S.randomized_cascade(base)][:2] == ["original", "classifier"]
    with pytest.raises(ValueError, match="no attention maps"):
        S.sanity_check(base, _x(), methods=["attention"])
    with pytest.raises(ValueError, match="at least one"):
        S.sanity_check(base, _x(), methods=[])
    r = S.sanity_check(base, _x(), methods=["gradcam"])
    assert len(r.scores["gradcam"]["ssim"]) == 5


def test_resnet18_backbone_has_a_cascade():
    model = build_model(ModelConfig(num_classes=5, backbone="resnet18", attention_depth=2))
    assert [n for n, _ in S.cascade_stages(model)] == ["gates & heads", "layer4", "layer3", "layer2",
                                                      "layer1 & stem"]


def test_over_images_and_summary(tiny_model):
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    seen = []
    stages, arrays = S.sanity_over(tiny_model, images, {}, [0, 2], methods=["attention", "gradcam"],
                                   progress=seen.append)
    assert seen == [1, 2] and set(arrays) == {"attention/spearman", "attention/ssim", "gradcam/spearman",
                                              "gradcam/ssim"}
    assert arrays["attention/ssim"].shape == (2, 5)
    s = S.summarize(stages, arrays)
    assert s["images"] == 2 and s["stages"] == stages
    assert s["methods"]["attention"]["ssim_mean"][0] == 1.0
    col = arrays["attention/spearman"][:, 2]
    assert s["methods"]["attention"]["spearman_mean"][2] == pytest.approx(col.mean(), abs=1e-4)
    assert s["methods"]["attention"]["spearman_std"][2] == pytest.approx(col.std(), abs=1e-4)
    fig = S.figure(s)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 2


def test_summary_skips_undefined_scores():
    s = S.summarize(["original", "x"], {"m/spearman": np.array([[1.0, np.nan], [1.0, 0.5]])})
    assert s["methods"]["m"]["spearman_mean"] == [1.0, 0.5] and s["methods"]["m"]["spearman_defined"] == [2, 1]
    s = S.summarize(["original", "x"], {"m/spearman": np.array([[1.0, np.nan]])})
    assert s["methods"]["m"]["spearman_mean"] == [1.0, None]
