"""The same numbers on an NVIDIA GPU: trace, a few mixed-precision training steps, attributions, the app.

Marked ``cuda`` and skipped without one; `.ci/gpu-check` runs them (`pytest -m cuda`). cuDNN may pick
TF32 kernels for convolutions, so GPU and CPU agree to about 1e-3, not bit for bit.
"""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ar_core
from conftest import ROOT, randomize_bn

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")]

ATOL = 2e-3


@pytest.fixture
def pair():
    """A WRN-16-4 with AD=3 AW=4 (the shipped architecture) on the CPU and a copy on the GPU."""
    torch.manual_seed(0)
    cpu = randomize_bn(ar_core.build_model(ar_core.ModelConfig(attention_depth=3, attention_width=4))).eval()
    gpu = ar_core.build_model(cpu.config).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


def test_trace_on_cuda_equals_cpu(pair):
    cpu, gpu = pair
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for flip in (False, True):
            a = cpu.trace(x, flip=flip)
            b = gpu.trace(x.cuda(), flip=flip).map(lambda t: t.float().cpu())
            torch.testing.assert_close(b.output, a.output, atol=ATOL, rtol=1e-3)
            torch.testing.assert_close(b.global_gates, a.global_gates, atol=ATOL, rtol=1e-3)
            for la, lb in zip(a.layers, b.layers):
                torch.testing.assert_close(lb.attention_maps, la.attention_maps, atol=ATOL, rtol=1e-3)
                torch.testing.assert_close(lb.confidence_gates, la.confidence_gates, atol=ATOL, rtol=1e-3)
            assert (b.output.argmax(1) == a.output.argmax(1)).float().mean() >= 0.875


def test_a_few_mixed_precision_training_steps():
    """fp16 autocast with a GradScaler, channels_last: the loss on a fixed batch falls, nothing overflows."""
    torch.manual_seed(0)
    model = ar_core.build_model(ar_core.ModelConfig(attention_depth=3, attention_width=4)).cuda().train()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(64, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda")
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=torch.float16):
            out, reg = model(x)
            loss = F.nll_loss(out.float(), y) + reg
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_attributions_and_curves_on_cuda_match_cpu(pair):
    from ar_core.attribution import attribute_batch, spearman
    from ar_core.faithfulness import curves_batch

    cpu, gpu = pair
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = [0, 3, 5, 9]
    for method in ("saliency", "gradcam", "integrated_gradients"):
        a = attribute_batch(cpu, x, targets, method, ig_steps=8)
        b = attribute_batch(gpu, x.cuda(), targets, method, ig_steps=8)
        assert b.shape == a.shape == (4, 32, 32)
        assert min(spearman(a[i], b[i]) for i in range(4)) > 0.98, method
    sal = np.random.default_rng(0).random((4, 2, 32, 32))
    _, da, ia = curves_batch(cpu, x, targets, sal, steps=8)
    _, db, ib = curves_batch(gpu, x.cuda(), targets, sal, steps=8)
    np.testing.assert_allclose(db, da, atol=5e-3)
    np.testing.assert_allclose(ib, ia, atol=5e-3)


def test_app_runs_on_cuda(tmp_path, monkeypatch):
    from PIL import Image
    from streamlit.testing.v1 import AppTest

    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=4, depth=10, width=1, attention_depth=3, attention_width=2)
    ckpt = ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), tmp_path / "tiny-cuda.safetensors",
                                   {"classes": [f"class{i}" for i in range(4)], "image_size": 32,
                                    "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    monkeypatch.setenv("AR_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.selectbox(key="model_label").set_value("tiny-cuda (AR_CHECKPOINT)")
    at.selectbox(key="device").set_value("cuda").run()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    at.file_uploader(key="images").set_value([("gpu.png", buf.getvalue(), "image/png")]).run()
    assert not at.exception and not at.error
    assert any("Device cuda" in c.value for c in at.caption)
    assert at.metric[0].label == "Prediction (fused)"


def test_smoothgrad_on_cuda_is_reproducible_and_leaves_the_gpus_random_stream(pair):
    """The noisy copies come from a fixed seed on the image's GPU inside a fork: the same map twice, and the
    caller's CUDA random state where it was."""
    from ar_core.attribution import attribute

    _, gpu = pair
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).cuda()
    torch.cuda.manual_seed(123)
    before = torch.cuda.get_rng_state()
    first = attribute(gpu, x, 1, "saliency", noise_tunnel=True).map
    assert torch.equal(torch.cuda.get_rng_state(), before)
    again = attribute(gpu, x, 1, "saliency", noise_tunnel=True).map  # cuDNN's backward may round differently
    np.testing.assert_allclose(again, first, rtol=1e-4, atol=1e-7)
