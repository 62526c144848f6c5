"""The first visitor waits no longer than later ones: a model is warmed once, when it is loaded."""

import subprocess
import sys

import torch
from streamlit.testing.v1 import AppTest

import ar_core
from conftest import ROOT, randomize_bn


def _checkpoint(path, ad=3):
    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_depth=ad, attention_width=2)
    return ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), path,
                                   {"classes": [f"c{i}" for i in range(4)],
                                    "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}})


def test_warm_up_loads_the_figure_code(tmp_path):
    """In a fresh process, warming a model imports what the first views need and runs the model."""
    ckpt = _checkpoint(tmp_path / "w.safetensors")
    code = ("import sys; sys.path.insert(0, %r); import ar_core; from ar_core import inference; import app.state as s; "
            "mods = ('plotly.graph_objs._figure', 'plotly.io._json', 'matplotlib.cm', 'pyarrow'); before = [m in sys.modules for m in mods]; "
            "runs = []; orig = inference.inspect; inference.inspect = lambda *a, **k: runs.append(1) or orig(*a, **k); "
            "s.warm_up(*ar_core.load_checkpoint(%r)); print(before, [m in sys.modules for m in mods], len(runs))")
    out = subprocess.run([sys.executable, "-c", code % (str(ROOT), str(ckpt))], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=300).stdout.strip().splitlines()[-1]
    assert out == "[False, False, False, False] [True, True, True, True] 2"  # both test-time augmentations


def test_warm_up_runs_once_per_model_not_per_session(tmp_path, monkeypatch):
    import app.state

    ckpt = _checkpoint(tmp_path / "once.safetensors")
    monkeypatch.setenv("AR_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    original = app.state.warm_up
    monkeypatch.setattr(app.state, "warm_up", lambda *a: calls.append(1) or original(*a))
    for _ in range(3):  # three visitors
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
        at.selectbox(key="model_label").set_value("once (AR_CHECKPOINT)").run()
        assert not at.exception
    assert len(calls) == 1
