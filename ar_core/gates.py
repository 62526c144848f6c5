"""How the gates behave: what their tanh receives, and whether it is saturated.

Every gate of the method is softmax(tanh(x)): the confidence gates [3] over the K heads of a layer,
the global gate [5] over the sources. tanh(2) = 0.964, so where |x| > 2 a unit's tanh sits within
4 % of ±1 and hardly moves with its input. A unit saturated on nearly every image is a constant
of the trained model, not a decision about the image; only the units that stay in the linear
range weigh one image differently from another.

``gate_statistics`` summarises the pre-tanh values the evaluator's pass collects (no extra model
run); ``image_gate_rows`` lays out one image's values from its trace.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .attention import gate_weights
from .model import Trace

SATURATION = 2.0  # |x| above this: tanh within 4 % of ±1
PINNED = 0.95  # saturated on at least this share of images: the unit acts as a constant
HIST_RANGE = (-6.0, 6.0)  # histogram span; values beyond it are counted in the end bins
HIST_BINS = 48


def gate_units(sources: Sequence[str], width: int) -> dict[str, list[str]]:
    """Gate name → its units: 'global' over the sources, each attended layer over its heads."""
    layers = [s for s in sources if s != "network"]
    if not layers:
        return {}
    return {"global": list(sources), **{name: [f"head {k + 1}" for k in range(width)] for name in layers}}


def unit_statistics(x: torch.Tensor) -> dict[str, list]:
    """Per column of the (N, U) pre-tanh values: mean, spread, saturated share and a histogram."""
    x = x.double()
    lo, hi = HIST_RANGE
    q = torch.quantile(x, torch.tensor([0.05, 0.95], dtype=x.dtype), dim=0)
    units = x.shape[1]
    bins = ((x.clamp(lo, hi) - lo) / (hi - lo) * HIST_BINS).long().clamp(max=HIST_BINS - 1)  # the top edge: last bin
    counts = torch.bincount((bins + HIST_BINS * torch.arange(units)).flatten(), minlength=units * HIST_BINS)
    return {"mean": x.mean(0).tolist(), "std": x.std(0, correction=0).tolist(),
            "min": x.amin(0).tolist(), "max": x.amax(0).tolist(),
            "p05": q[0].tolist(), "p95": q[1].tolist(),
            "saturated_fraction": (x.abs() > SATURATION).double().mean(0).tolist(),
            "saturated_high_fraction": (x > SATURATION).double().mean(0).tolist(),
            "saturated_low_fraction": (x < -SATURATION).double().mean(0).tolist(),
            "positive_fraction": (x > 0).double().mean(0).tolist(),
            "counts": counts.view(units, HIST_BINS).tolist()}


def lean_statistics(x: torch.Tensor) -> dict[str, float]:
    """How far a gate leans over the images (:func:`lean`, from its (N, U) pre-tanh values): mean, spread,
    and the share of images on which it leans at least ``PINNED`` of the most it can."""
    share = lean(gate_weights(x.double()))
    return {"mean": float(share.mean()), "std": float(share.std(correction=0)),
            "at_bound_fraction": float((share >= PINNED).double().mean())}


def gate_statistics(cat: dict[str, torch.Tensor], sources: Sequence[str]) -> dict[str, Any]:
    """Statistics of every gate's pre-tanh values over a data set, from ``evaluate.collect``'s arrays.

    Keys ``global_pre_tanh`` (N, S) and ``gate_pre_tanh/<layer>`` (N, K). Empty for a baseline.
    """
    if "global_pre_tanh" not in cat:
        return {}
    layers = [s for s in sources if s != "network"]
    width = cat[f"gate_pre_tanh/{layers[0]}"].shape[1]
    arrays = {"global": cat["global_pre_tanh"], **{name: cat[f"gate_pre_tanh/{name}"] for name in layers}}
    lo, hi = HIST_RANGE
    stats = {"saturation_threshold": SATURATION, "pinned_share": PINNED, "n": int(len(cat["global_pre_tanh"])),
             "bin_edges": torch.linspace(lo, hi, HIST_BINS + 1).tolist(),
             "gates": {gate: {"units": units, **unit_statistics(arrays[gate]), "lean": lean_statistics(arrays[gate])}
                       for gate, units in gate_units(sources, width).items()}}
    return {**stats, "summary": describe(stats)}


def pinned_sign(s: dict[str, Any], u: int) -> float | None:
    """+1 or -1 where unit ``u`` of a gate's statistics is saturated at that end on at least ``PINNED`` of the
    images (its tanh a constant); None where it responds to the image, or switches between the two ends."""
    if s["saturated_high_fraction"][u] >= PINNED:
        return 1.0
    if s["saturated_low_fraction"][u] >= PINNED:
        return -1.0
    return None


def pinned_units(stats: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(gate, unit, sign of its tanh) of every unit pinned at one end of tanh (:func:`pinned_sign`)."""
    out = []
    for gate, s in stats.get("gates", {}).items():
        for u, unit in enumerate(s["units"]):
            sign = pinned_sign(s, u)
            if sign is not None:
                out.append((gate, unit, sign))
    return out


def weight_bounds(units: int) -> tuple[float, float]:
    """The least and greatest weight softmax(tanh(x)) can give one of ``units`` units: its tanh at -1 and
    every other at +1, or the other way round (0.043 and 0.711 for four sources)."""
    e = math.e
    return 1 / e / (1 / e + (units - 1) * e), e / (e + (units - 1) / e)


def lean(weights: torch.Tensor) -> torch.Tensor:
    """How far softmax(tanh) gates lean, as a share of the most they can: (ln max - ln min) / 2 over the last
    axis. A log-weight is tanh(x) minus a constant, so this is half the spread of the units' tanh values:
    0 for equal weights, 1 when two units sit at opposite ends of tanh (weights e² apart, the bound)."""
    logw = weights.double().clamp_min(1e-30).log()
    return (logw.amax(-1) - logw.amin(-1)) / 2


def pinned_corner(stats: dict[str, Any], gate: str) -> list[float] | None:
    """The weights of ``gate`` when every one of its units is pinned: softmax of their tanh signs (±1).

    softmax(tanh(x)) can never give one unit more than e² ≈ 7.4 times another's weight; with every
    unit saturated the gate sits at a corner of what it can express and no image moves it. None
    while any unit of the gate still responds to the image.
    """
    s = stats["gates"][gate]
    signs = [pinned_sign(s, u) for u in range(len(s["units"]))]
    if None in signs:
        return None
    return torch.softmax(torch.tensor(signs, dtype=torch.float64), 0).tolist()


def describe(stats: dict[str, Any]) -> list[str]:
    """One plain sentence per gate unit, then per gate how far it leans and, when every unit is pinned,
    its constant weights: for reports and the app."""
    lines = []
    for gate, s in stats.get("gates", {}).items():
        for u, unit in enumerate(s["units"]):
            sat = s["saturated_fraction"][u]
            line = (f"{gate} gate, {unit}: pre-tanh {s['mean'][u]:+.2f} ± {s['std'][u]:.2f} "
                    f"(5-95 %: {s['p05'][u]:+.2f} … {s['p95'][u]:+.2f}), saturated on {sat:.1%} of images")
            sign = pinned_sign(s, u)
            if sign is not None:
                line += f": its tanh is pinned at {sign:+.0f}, a constant"
            elif sat >= PINNED:
                line += ": saturated, but at both ends (a switch between them, not a constant)"
            lines.append(line)
        if "lean" in s:
            lines.append(f"{gate} gate: leans {s['lean']['mean']:.0%} of the most softmax(tanh) allows on average "
                         f"(at least {PINNED:.0%} on {s['lean']['at_bound_fraction']:.1%} of images)")
        corner = pinned_corner(stats, gate)
        if corner is not None:
            lines.append(f"{gate} gate: every unit is pinned, so its weights are the constant "
                         f"{' / '.join(f'{w:.3f}' for w in corner)}, a corner of what softmax(tanh) can express")
    return lines


def image_gate_rows(trace: Trace, i: int = 0) -> list[dict[str, Any]]:
    """Image ``i``'s gates: pre-tanh value, tanh, resulting weight and whether tanh is saturated."""
    rows = []

    def add(gate, units, pre, weights):
        for u, unit in enumerate(units):
            x = float(pre[u])
            rows.append({"gate": gate, "unit": unit, "pre-tanh": x, "tanh": float(torch.tanh(pre[u])),
                         "weight": float(weights[u]), "saturated": abs(x) > SATURATION})

    if trace.layers:
        add("global", trace.sources, trace.global_pre_tanh[i], trace.global_gates[i])
    for layer in trace.layers:
        k = layer.confidence_gates.shape[1]
        add(layer.name, [f"head {j + 1}" for j in range(k)], layer.gate_pre_tanh[i], layer.confidence_gates[i])
    return rows


def figure(stats: dict[str, Any]):
    """Matplotlib figure for reports: per gate, each unit's pre-tanh histogram, saturation shaded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    gates = stats["gates"]
    edges = torch.tensor(stats["bin_edges"])
    centers = ((edges[1:] + edges[:-1]) / 2).numpy()
    fig = Figure(figsize=(8, 2.0 * len(gates) + 0.5), layout="constrained")
    axes = fig.subplots(len(gates), 1, squeeze=False)[:, 0]
    t = stats["saturation_threshold"]
    for ax, (gate, s) in zip(axes, gates.items()):
        lo, hi = float(edges[0]), float(edges[-1])
        ax.axvspan(lo, -t, color="0.9")
        ax.axvspan(t, hi, color="0.9")
        for u, unit in enumerate(s["units"]):
            ax.step(centers, s["counts"][u], where="mid", label=f"{unit} ({s['saturated_fraction'][u]:.0%} sat.)")
        ax.set(xlim=(lo, hi), ylabel="images", title=f"{gate} gate: input of tanh (grey: |x| > {t:g}, saturated)")
        ax.legend(fontsize=7, ncol=2)
    axes[-1].set_xlabel(f"pre-tanh value (values beyond ±{hi:g} counted in the end bins)")
    return fig
