"""How the gates behave: a data-set tab and a per-image panel (layout only; numbers from ar_core.gates)."""

from __future__ import annotations

import streamlit as st

from app import figures_v2
from ar_core import gates as G

EXPLAIN = ("Every gate is softmax(tanh(x)). Where |x| > {t:g}, tanh is within 4 % of ±1 and barely moves: a unit "
           "that is saturated on (nearly) every image is a constant of the trained model, not a decision about "
           "the image. Only the units whose x stays between −{t:g} and +{t:g} weigh one image differently from "
           "another.")


def dataset_gates(r: dict):
    """The data-set page's tab: per gate unit, the spread and saturation of its pre-tanh input."""
    stats = r.get("gate_pre_tanh")
    if not stats:
        st.info("A baseline (AD = 0) has no gates." if "global_gates" not in r else
                "Run the analysis again to measure the gates' pre-tanh values.")
        return
    t = stats["saturation_threshold"]
    st.write(EXPLAIN.format(t=t))
    pinned = G.pinned_units(stats)
    if pinned:
        st.warning("Saturated at the same end of tanh on at least {:.0%} of the images, so in effect constants: "
                   .format(stats["pinned_share"])
                   + "; ".join(f"{gate} gate → {unit} (tanh ≈ {sign:+.0f})" for gate, unit, sign in pinned) + ".")
    else:
        st.success("No gate unit is saturated on most images: every gate responds to the image.")
    for gate in stats["gates"]:
        corner = G.pinned_corner(stats, gate)
        if corner is not None:
            st.info(f"Every unit of the {gate} gate is pinned, so its weights are the same for every image: "
                    f"softmax of the tanh signs, {' / '.join(f'{w:.3f}' for w in corner)} "
                    f"({', '.join(stats['gates'][gate]['units'])}). That is a corner of what softmax(tanh(x)) can "
                    f"express: no unit can get more than e² ≈ 7.4 times another's weight, so the gate cannot lean "
                    f"further, whatever the image.")
    rows = []
    for gate, s in stats["gates"].items():
        for u, unit in enumerate(s["units"]):
            if gate == "global":  # the resulting weights, as the evaluator reports them
                w = r["global_gates"][unit]
                w_mean, w_std = w["mean"], w["std"]
            else:
                w = r["confidence_gates"][gate]
                w_mean, w_std = w["mean"][u], w["std"][u]
            rows.append({"gate": gate, "unit": unit, "pre-tanh mean": round(s["mean"][u], 3),
                         "std": round(s["std"][u], 3), "5 %": round(s["p05"][u], 3), "95 %": round(s["p95"][u], 3),
                         "saturated": f"{s['saturated_fraction'][u]:.1%}", "gate weight mean": round(w_mean, 3),
                         "gate weight std": round(w_std, 3)})
    st.dataframe(rows, hide_index=True, key="gv_table")
    st.write("How far each gate leans: half the spread of its units' tanh values, 100 % when two of them sit at "
             "opposite ends of tanh (weights e² apart, the most softmax(tanh) allows). A gate that decides per image "
             "leans by different amounts on different images; one that always leans 100 % has hit its bound.")
    st.dataframe([{"gate": gate, "leans, mean": round(s["lean"]["mean"], 3), "std": round(s["lean"]["std"], 3),
                   "images leaning at least {:.0%}".format(stats["pinned_share"]): f"{s['lean']['at_bound_fraction']:.1%}"}
                  for gate, s in stats["gates"].items() if "lean" in s], hide_index=True, key="gv_lean")
    gate = st.selectbox("Distribution of", list(stats["gates"]), format_func=lambda g: f"{g} gate", key="gv_gate")
    st.plotly_chart(figures_v2.gate_distribution_figure(stats, gate), key="gv_hist")


def image_gates(trace, gates: list[str], key: str):
    """One image: each unit's pre-tanh value next to its tanh and weight, and which are saturated."""
    rows = [r for r in G.image_gate_rows(trace, 0) if r["gate"] in gates]
    if not rows:
        return
    st.markdown("**What the gates' tanh received**" + (f" (mean over {len(trace.views)} views)" if trace.views else ""))
    if st.toggle("Show them on the tanh curve", key=f"{key}_curve"):  # off by default: the views stay fast
        st.plotly_chart(figures_v2.tanh_figure(rows, G.SATURATION), key=f"{key}_tanh")
    # a Markdown table: drawn on every inspector run, where a data frame would cost ~10 ms
    lines = ["| gate | unit | pre-tanh x | tanh(x) | weight | saturated |", "|---|---|--:|--:|--:|---|"]
    lines += [f"| {r['gate']} | {r['unit']} | {r['pre-tanh']:+.3f} | {r['tanh']:+.3f} | {r['weight']:.3f} | "
              f"{'yes' if r['saturated'] else ''} |" for r in rows]
    st.markdown("\n".join(lines))
    tanh: dict[str, list[float]] = {}
    for r in rows:
        tanh.setdefault(r["gate"], []).append(r["tanh"])
    st.caption("How far each gate leans on this image (half the spread of its units' tanh; 100 %: two units at "
               "opposite ends, the most softmax(tanh) allows): "
               + " · ".join(f"{gate} {(max(t) - min(t)) / 2:.0%}" for gate, t in tanh.items()) + ".")
    sat = [f"{r['gate']} → {r['unit']}" for r in rows if r["saturated"]]
    if sat:
        st.caption(f"Saturated here (|x| > {G.SATURATION:g}): {', '.join(sat)}. For these units tanh is ±1 whatever "
                   "the exact value, so their weight is set by the model, not by this image. The data-set page shows "
                   "whether they are saturated on every image.")
    else:
        st.caption(f"No unit is saturated here: every weight above responds to this image (|x| ≤ {G.SATURATION:g}).")
