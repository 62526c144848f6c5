"""Gate behaviour: pre-tanh statistics on hand-made values, and one image's rows from its trace."""

import pytest
import torch

from ar_core import gates as G


def _cat():
    # global gate over (g, network): g always far below -2, network spread inside the linear range
    glob = torch.tensor([[-3.0, 0.5], [-3.5, -0.5], [-4.0, 1.5], [-2.5, -1.5]])
    heads = torch.tensor([[2.5, 0.0], [1.0, 0.0], [-9.0, 0.0], [3.0, 0.0]])
    return {"global_pre_tanh": glob, "gate_pre_tanh/g": heads}


def test_statistics_on_hand_made_values():
    s = G.gate_statistics(_cat(), ["g", "network"])
    glob, g = s["gates"]["global"], s["gates"]["g"]
    assert glob["units"] == ["g", "network"] and g["units"] == ["head 1", "head 2"]
    assert glob["mean"] == pytest.approx([-3.25, 0.0])
    assert glob["std"] == pytest.approx([0.5590170, 1.1180340])
    assert glob["saturated_fraction"] == [1.0, 0.0]
    assert g["saturated_fraction"] == [0.75, 0.0]  # 2.5, -9 and 3 are beyond ±2; 1.0 is not
    assert g["min"][0] == -9.0 and g["max"][0] == 3.0
    assert s["n"] == 4 and len(s["bin_edges"]) == G.HIST_BINS + 1
    for counts in g["counts"]:
        assert sum(counts) == 4  # every image counted, -9 clamped into the first bin
    assert g["counts"][0][0] == 1 and g["counts"][1][G.HIST_BINS // 2] == 4  # zero opens the middle bin
    assert G.pinned_units(s) == [("global", "g", -1.0)]  # 75 % saturated is not pinned
    lines = G.describe(s)
    assert len(lines) == 6 and "pinned at -1" in lines[0] and "pinned" not in lines[1]
    t = torch.tanh(_cat()["global_pre_tanh"].double())
    spread = (t.amax(1) - t.amin(1)) / 2  # per image: half the spread of the units' tanh values
    assert glob["lean"] == pytest.approx({"mean": float(spread.mean()), "std": float(spread.std(correction=0)),
                                          "at_bound_fraction": float((spread >= 0.95).double().mean())})
    assert lines[2] == (f"global gate: leans {float(spread.mean()):.0%} of the most softmax(tanh) allows on average "
                        f"(at least 95% on {float((spread >= 0.95).double().mean()):.1%} of images)")
    assert s["summary"] == lines  # kept in analysis.json, printed by the analysis


def test_a_gate_whose_units_are_all_pinned_sits_at_a_corner():
    """Four global units pinned at tanh = -1, -1, +1, +1 (as on the retrained CIFAR-10 model): the weights are
    e^-1 / (2e^-1 + 2e) and e / (2e^-1 + 2e) for every image; one unit in the linear range frees the gate."""
    import math

    glob = torch.tensor([[-3.9, -3.2, 3.9, 3.5], [-4.1, -2.9, 3.6, 2.1], [-3.7, -3.5, 4.2, 8.0]])
    heads = torch.tensor([[2.5, 0.3], [3.0, -0.4], [2.2, 0.1]])
    s = G.gate_statistics({"global_pre_tanh": glob, "gate_pre_tanh/g1": heads, "gate_pre_tanh/g2": heads,
                           "gate_pre_tanh/g3": heads}, ["g1", "g2", "g3", "network"])
    e = math.e
    low, high = 1 / e / (2 / e + 2 * e), e / (2 / e + 2 * e)
    assert G.pinned_corner(s, "global") == pytest.approx([low, low, high, high])
    assert (round(low, 3), round(high, 3)) == (0.060, 0.440) and high / low == pytest.approx(e ** 2)
    with torch.no_grad():  # the model's own gate at those inputs lands on the corner to within tanh's 4 %
        assert torch.softmax(torch.tanh(glob), 1).mean(0).tolist() == pytest.approx([low, low, high, high], abs=0.01)
    assert G.pinned_corner(s, "g1") is None  # head 2 stays in tanh's linear range
    # saturated on every image, but at +3 on some and -3 on others: a switch, so no unit of it is a constant
    flips = G.gate_statistics({**{f"gate_pre_tanh/g{i}": heads for i in (1, 2, 3)},
                               "global_pre_tanh": glob * torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, -1]])},
                              ["g1", "g2", "g3", "network"])
    assert flips["gates"]["global"]["saturated_fraction"][3] == 1.0
    assert G.pinned_corner(flips, "global") is None and ("global", "network", 1.0) not in G.pinned_units(flips)
    assert "at both ends" in flips["summary"][3]
    corner = [line for line in G.describe(s) if "corner" in line]
    assert corner == ["global gate: every unit is pinned, so its weights are the constant 0.060 / 0.060 / 0.440 / "
                      "0.440, a corner of what softmax(tanh) can express"]


def test_a_baseline_has_no_gate_statistics():
    assert G.gate_statistics({"pred": torch.zeros(3)}, ["network"]) == {}
    assert G.gate_units(["network"], 4) == {}


def test_image_rows_follow_the_trace(tiny_model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = tiny_model.trace(x)
    t.layers[0].gate_pre_tanh[1, 0] = 2.5  # a saturated head, so the flag is exercised both ways
    rows = G.image_gate_rows(t, 1)
    assert [r["gate"] for r in rows] == ["global"] * 4 + ["group1"] * 2 + ["group2"] * 2 + ["group3"] * 2
    assert rows[0]["unit"] == "group1" and rows[3]["unit"] == "network" and rows[4]["unit"] == "head 1"
    for r, pre in zip(rows[:4], t.global_pre_tanh[1]):
        assert r["pre-tanh"] == pytest.approx(float(pre)) and r["tanh"] == pytest.approx(float(torch.tanh(pre)))
        assert r["saturated"] == (abs(float(pre)) > 2)
    assert rows[4]["saturated"] and rows[4]["pre-tanh"] == 2.5 and rows[4]["tanh"] == pytest.approx(0.98661429)
    assert rows[6]["weight"] == pytest.approx(float(t.layers[1].confidence_gates[1, 0]))


def test_report_figure_draws_every_gate():
    fig = G.figure(G.gate_statistics(_cat(), ["g", "network"]))
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2


def test_lean_is_half_the_spread_of_the_units_tanh_values():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 3
    t = torch.tanh(x.double())
    assert torch.allclose(G.lean(torch.softmax(t, 1)), (t.amax(1) - t.amin(1)) / 2)
    assert float(G.lean(torch.full((4,), 0.25))) == 0.0
    assert float(G.lean(torch.softmax(torch.tensor([-1.0, 1.0, 1.0, 1.0]), 0))) == pytest.approx(1.0)
    assert float(G.lean(torch.tensor([0.060, 0.060, 0.442, 0.438]))) == pytest.approx(1.0, abs=0.01)  # v2 C10


def test_the_how_it_works_page_states_the_global_gates_bounds():
    """A weight of four sources' softmax(tanh) is least with its unit at -1 and the others at +1, greatest the
    other way round; the page's figures are those."""
    from app.pages.about import EQUATIONS

    low, high = G.weight_bounds(4)
    grid = torch.cartesian_prod(*[torch.linspace(-1, 1, 5)] * 4)  # tanh values over a grid of the cube
    weights = torch.softmax(grid, 1)
    assert float(weights.min()) == pytest.approx(low) and float(weights.max()) == pytest.approx(high)
    assert G.weight_bounds(2) == pytest.approx((float(torch.sigmoid(torch.tensor(-2.0))),
                                                float(torch.sigmoid(torch.tensor(2.0)))))
    (text,) = [t for title, _, t in EQUATIONS if title == "Global gate"]
    assert f"between {low:.3f} and {high:.3f}" in text
