"""Many sessions at once on one process (short runs; `python -m app.loadtest` is the long one)."""

import os
from pathlib import Path

import pytest
import torch

import ar_core
from app.loadtest import CHROMEDRIVER, CHROMIUM, browser_load, growth_mb, trace_load
from conftest import randomize_bn


def test_eight_threads_on_the_trace_api(tiny_model):
    r = trace_load(tiny_model, workers=8, seconds=3, max_runs=400)
    assert r["errors"] == 0, r["first_errors"]
    assert r["runs"] >= 100 and r["p95_ms"] >= r["p50_ms"] > 0
    assert set(r["memory_mb_by_runs"]) == set(range(50, r["runs"] + 1, 50))
    assert r["memory_end_mb"] - r["memory_mb_by_runs"][100] < 50
    assert growth_mb(r) < 20


def test_eight_threads_with_flip_tta(tiny_model):
    # a count of runs, not a speed: the time cap only bounds a hang (the benchmark measures speed)
    r = trace_load(tiny_model, workers=8, seconds=120, max_runs=200, tta="flip")
    assert r["errors"] == 0 and r["runs"] == 200, r["first_errors"]


@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) and not os.environ.get("CI"),
                    reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")
def test_eight_browsers_on_one_server(tmp_path):
    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_width=2)
    ckpt = ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), tmp_path / "load.safetensors",
                                   {"classes": ["apple", "bear", "cloud", "dolphin"]})
    # correctness under load, not speed: a page may wait minutes on a busy 2-core machine (app.loadtest measures)
    r = browser_load(str(ckpt), workers=8, seconds=20, max_runs=48, n_images=12, every=8, timeout=300)
    assert r["errors"] == 0, r["first_errors"]
    assert r["runs"] >= 8
    assert r["memory_after_first_round_mb"] > 0 and 8 in r["memory_mb_by_runs"]
