"""How fast the page answers, measured with Streamlit's AppTest (used by `python -m ar_core.bench`).

Uses the shipped CIFAR-10 attention checkpoint when present, else a freshly initialised WRN-16-4
with AD=3 AW=4 (the speed does not depend on the weights).
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def time_app(repeats: int = 10) -> dict:
    """Median wall time of: a new image → all default views, and a display-control rerun."""
    import torch
    from streamlit.testing.v1 import AppTest

    import ar_core
    from ar_core import inference

    shipped = ar_core.available_checkpoints().get("cifar10-wrn16x4-ad3aw4")
    with tempfile.TemporaryDirectory() as tmp:
        if shipped is None:
            torch.manual_seed(0)
            model = ar_core.build_model(ar_core.ModelConfig(attention_depth=3, attention_width=4)).eval()
            path = ar_core.save_checkpoint(model, Path(tmp) / "bench-wrn16x4.safetensors",
                                           {"classes": [f"c{i}" for i in range(10)]})
            os.environ["AR_CHECKPOINT"] = str(path)
            label = "bench-wrn16x4 (AR_CHECKPOINT)"
        else:
            label = "cifar10-wrn16x4-ad3aw4 (shipped)"
        calls = []
        original = inference.inspect
        inference.inspect = lambda *a, **k: calls.append(1) or original(*a, **k)
        try:
            at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
            at.selectbox(key="model_label").set_value(label).run()
            upload, control, control_runs = [], [], 0
            for i in range(repeats + 1):
                at.file_uploader(key="images").set_value([(f"bench{i}.png", _png(i), "image/png")])
                t0 = time.perf_counter()
                at.run()
                upload.append(time.perf_counter() - t0)
                n = len(calls)
                at.slider(key="alpha").set_value(0.3 + 0.05 * (i % 5))
                t0 = time.perf_counter()
                at.run()
                control.append(time.perf_counter() - t0)
                control_runs += len(calls) - n
                if at.exception:
                    raise AssertionError(f"the page raised: {at.exception}")
        finally:
            inference.inspect = original
            if shipped is None:
                os.environ.pop("AR_CHECKPOINT", None)
    return {"checkpoint": label, "upload_to_views_ms": round(1000 * statistics.median(upload[1:]), 1),
            "display_control_rerun_ms": round(1000 * statistics.median(control[1:]), 1),
            "model_runs_on_control_change": control_runs}
