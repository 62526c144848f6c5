"""The trainer's loss and learning-rate schedule, value by value."""

import math

import pytest
import torch
import torch.nn.functional as F

from ar_core.train import lr_factor, nll_with_smoothing


def test_label_smoothing_by_hand():
    logp = torch.log(torch.tensor([[0.75, 0.25]]))
    target = torch.tensor([0])
    assert float(nll_with_smoothing(logp, target, 0.0)) == pytest.approx(-math.log(0.75))
    # (1 − ε) · (−log p_y) + ε · mean_j(−log p_j), ε = 0.1
    want = 0.9 * -math.log(0.75) + 0.1 * -(math.log(0.75) + math.log(0.25)) / 2
    assert float(nll_with_smoothing(logp, target, 0.1)) == pytest.approx(want, rel=1e-6)


def test_label_smoothing_matches_torch_on_log_probabilities():
    g = torch.Generator().manual_seed(0)
    logp = F.log_softmax(torch.randn(16, 10, generator=g), 1)
    target = torch.randint(0, 10, (16,), generator=g)
    for eps in (0.05, 0.1, 0.3):
        torch.testing.assert_close(nll_with_smoothing(logp, target, eps),
                                   F.cross_entropy(logp, target, label_smoothing=eps))


def test_onecycle_schedule_values():
    f = lambda step: lr_factor(step, total=110, warmup=10, schedule="onecycle", milestones=[], steps_per_epoch=11)  # noqa: E731
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warm-up, peak at its last step
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # halfway through the cosine
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.0, abs=1e-12) and f(200) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_values():
    f = lambda step: lr_factor(step, total=20000, warmup=0, schedule="step", milestones=[60, 120, 160],  # noqa: E731
                               steps_per_epoch=100)
    assert [f(s) for s in (0, 5999, 6000, 11999, 12000, 16000, 19999)] == pytest.approx(
        [1.0, 1.0, 0.2, 0.2, 0.04, 0.008, 0.008])
