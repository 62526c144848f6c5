"""The same numbers on an NVIDIA GPU: trace, a few mixed-precision training steps, attributions, the app.

Marked ``cuda`` and skipped without one; `.ci/gpu-check` runs them (`pytest -m cuda`). cuDNN may pick
TF32 kernels for convolutions, so GPU and CPU agree to about 1e-3, not bit for bit.
"""

import io
import json

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


def test_the_generators_of_a_state_saved_inside_an_epoch_include_the_gpus():
    """Dropout masks are drawn on the GPU: restoring a saved state replays the GPU's stream as well as the
    CPU's and the augmentation's."""
    from ar_core import train as T

    cuda, augment = torch.device("cuda"), torch.Generator().manual_seed(3)
    states = T.generators(augment, cuda)
    assert set(states) == {"augment", "torch", "cuda"}
    first = [torch.rand(4, device="cuda"), torch.rand(4), torch.rand(4, generator=augment)]
    T.set_generators(states, augment, cuda)
    again = [torch.rand(4, device="cuda"), torch.rand(4), torch.rand(4, generator=augment)]
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_a_run_stopped_inside_an_epoch_on_cuda_resumes_where_it_stopped(tmp_path, monkeypatch):
    """The trainer on CUDA, stopped after batch 2 of epoch 2 and resumed, ends where an uninterrupted run
    does: within ten times what two uninterrupted runs differ by (cuDNN's kernels need not be bit-exact)."""
    from safetensors import safe_open

    from ar_core import train as T
    from test_data import make_image_folder

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    data = tmp_path / "toy"
    make_image_folder(data, classes=("red", "green", "blue"), per_class=16)
    common = ["--data", str(data), "--depth", "10", "--width", "1", "--attention-width", "2", "--val-size", "6",
              "--batch-size", "8", "--epochs", "2", "--dropout", "0.3", "--ema", "0.9", "--ema-bn-images", "16",
              "--amp", "off", "--device", "cuda", "--no-progress"]
    runs = {name: tmp_path / name / "m.safetensors" for name in ("whole", "again", "split")}
    for name in ("whole", "again"):
        T.main([*common, "--out", str(runs[name]), "--save-every", "0"])
    T.main([*common, "--out", str(runs["split"]), "--save-every", "1e-9", "--max-steps", "7"])  # stops in epoch 2
    with safe_open(str(runs["split"].with_name("m.safetensors.state.safetensors")), framework="pt") as f:
        assert {"rng.augment", "rng.torch", "rng.cuda"} <= set(f.keys())
        assert json.loads(f.metadata()["state"])["in_epoch"]["batches"] == 2
    T.main([*common, "--out", str(runs["split"]), "--resume"])
    weights = {name: ar_core.load_checkpoint(path)[0].state_dict() for name, path in runs.items()}

    def largest_difference(a, b):
        return max(float((weights[a][k].float() - weights[b][k].float()).abs().max()) for k in weights[a])

    noise = largest_difference("whole", "again")
    assert largest_difference("whole", "split") <= max(10 * noise, 1e-5), noise


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
