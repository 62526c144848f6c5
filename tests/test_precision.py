"""One precision policy for every entry point, and float32 attention arithmetic under autocast."""

import pytest
import torch
import torch.nn.functional as F

from ar_core import evaluate as E
from ar_core import precision as P
from ar_core import train as T
from ar_core.attention import AttentionModule


@pytest.mark.parametrize("avx512_bf16, amx, want", [(False, False, "float32"), (True, False, "bfloat16"),
                                                    (False, True, "bfloat16")])
def test_auto_uses_bf16_on_any_native_bf16_cpu(monkeypatch, avx512_bf16, amx, want):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert P.autocast_for(cpu, "auto")[1] == want
    assert E.autocast_for is P.autocast_for  # the evaluator reports the precision this policy picks
    assert T.autocast_for is P.autocast_for and T.pick_device is P.pick_device  # and the trainer trains in it
    assert P.autocast_for(cpu, "on")[1] == "bfloat16" and P.autocast_for(cpu, "off")[1] == "float32"
    with P.autocast_for(cpu, "on")[0]():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_cuda_is_float16_and_bad_modes_are_refused():
    assert P.autocast_for(torch.device("cuda"), "auto")[1] == "float16"
    assert P.autocast_for(torch.device("cuda"), "off")[1] == "float32"
    assert P.autocast_for(torch.device("mps"), "auto")[1] == "float32"
    with pytest.raises(ValueError, match="auto, on, off"):
        P.autocast_for(torch.device("cpu"), "fast")


def test_pick_device_and_options(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "mps_available", lambda: False)
    assert P.pick_device("auto") == torch.device("cpu") and P.device_options() == ["auto", "cpu"]
    monkeypatch.setattr(P, "mps_available", lambda: True)
    assert P.pick_device("auto") == torch.device("mps") and P.device_options() == ["auto", "cpu", "mps"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert P.pick_device("auto") == torch.device("cuda") and P.device_options() == ["auto", "cpu", "cuda", "mps"]
    assert P.pick_device("cuda:1") == torch.device("cuda", 1)


def test_a_device_this_machine_lacks_is_refused_with_what_it_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "mps_available", lambda: False)
    for name, says in [("cuda", "sees no CUDA device"), ("cuda:0", "sees no CUDA device"), ("mps", "no Apple GPU"),
                       ("gpu", "unknown device 'gpu'; use auto, cpu, cuda"), ("meta", "unknown device")]:
        with pytest.raises(ValueError, match=says):
            P.pick_device(name)
    assert P.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="cuda:1, but this machine has 1 CUDA device"):
        P.pick_device("cuda:1")


COMMANDS = {
    "ar_core.train": ["--data", "nowhere", "--out", "nowhere.safetensors"],
    "ar_core.evaluate": ["--checkpoint", "nowhere.safetensors", "--data", "nowhere"],
    "ar_core.analyze": ["--checkpoint", "nowhere.safetensors", "--data", "nowhere", "--out", "nowhere"],
    "ar_core.perturb": ["--checkpoint", "nowhere.safetensors", "--data", "nowhere", "--out", "nowhere"],
    "ar_core.compare": ["--a", "a.safetensors", "--b", "b.safetensors", "--data", "nowhere"],
    "ar_core.bench": ["--quick", "--out", "nowhere.json"],
    "app.bench": ["--quick", "--out", "nowhere.json"],
}


@pytest.mark.parametrize("cli", COMMANDS)
def test_every_command_line_refuses_a_missing_device_alike_before_any_work(monkeypatch, capsys, cli):
    """One check for every --device: a machine without CUDA gets the same message and exit status 2,
    before anything loads."""
    import importlib

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(cli).main([*COMMANDS[cli], "--device", "cuda"])
    said = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --device: device cuda, but PyTorch sees no CUDA device" in said, said


@pytest.mark.parametrize("cli", ["ar_core.evaluate", "ar_core.analyze", "ar_core.perturb", "ar_core.compare"])
def test_device_auto_reaches_the_model_as_a_device_of_this_machine(monkeypatch, cli):
    """'auto' is a word for the command line: the checkpoint is loaded onto what it picks."""
    import importlib

    import ar_core.checkpoint

    loaded_on = []

    def load_checkpoint(path, device=None, **kwargs):
        loaded_on.append(device)
        raise SystemExit(0)

    module = importlib.import_module(cli)
    monkeypatch.setattr(ar_core.checkpoint, "load_checkpoint", load_checkpoint)
    monkeypatch.setattr(module, "load_checkpoint", load_checkpoint, raising=False)
    with pytest.raises(SystemExit):
        module.main([*COMMANDS[cli], "--device", "auto"])
    assert loaded_on and torch.device(loaded_on[0]) == P.pick_device("auto"), loaded_on


def _reference(module, z, convs_in_bf16):
    """[1]-[4] in float64 from the module's convolution outputs (computed as autocast would)."""
    b, c, h, w = z.shape
    k, m = module.width, module.num_classes
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=convs_in_bf16):
        a, o, g = module.attention_head(z), module.output_head(z), module.confidence_gate(z)
    H = F.softmax(a.double().flatten(2), dim=2)
    heads = torch.einsum("bkmp,bkp->bkm", o.double().reshape(b, k, m, h * w), H)
    gates = F.softmax(torch.tanh(torch.einsum("bkp,bkp->bk", g.double().flatten(2), H)), dim=1)
    return heads, gates, torch.einsum("bk,bkm->bm", gates, heads)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_attention_arithmetic_stays_float32_under_bf16_autocast(kernel_size):
    torch.manual_seed(0)
    module = AttentionModule(16, 10, 4, kernel_size).eval()
    z = torch.randn(3, 16, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(z)
    with torch.no_grad():
        # 1x1 heads pool the float32 features before any projection: no bf16 anywhere. 3x3 heads
        # convolve in bf16 (autocast's choice), then pool and gate in float32.
        heads, gates, hyp = _reference(module, z, convs_in_bf16=kernel_size == 3)
    assert out.hypothesis.dtype == out.confidence_gates.dtype == out.attention_maps.dtype == torch.float32
    torch.testing.assert_close(out.head_hypotheses.double(), heads, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.confidence_gates.double(), gates, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.hypothesis.double(), hyp, rtol=1e-5, atol=1e-5)


def test_the_global_gate_stays_float32_under_bf16_autocast():
    """g_O = softmax(tanh(BN(W_G · GAP(Z^L)))) from bf16 features: the same numbers as float32 arithmetic."""
    from ar_core.attention import GlobalGate

    torch.manual_seed(0)
    gate = GlobalGate(64, 4).eval()
    gate.bn.running_mean.uniform_(-1, 1)
    gate.bn.running_var.uniform_(0.05, 0.2)  # |pre-tanh| of a few units, as in the trained models
    z = torch.randn(8, 64, 8, 8).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = gate(z)
    bn = gate.bn  # the reference in float64, written out
    linear = z.double().mean(dim=(2, 3)) @ gate.linear.weight.double().T
    pre = (linear - bn.running_mean.double()) / (bn.running_var.double() + bn.eps).sqrt() * bn.weight.double() \
        + bn.bias.double()
    assert out.pre_tanh.dtype == out.gates.dtype == torch.float32 and pre.abs().max() > 2
    torch.testing.assert_close(out.pre_tanh.double(), pre, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.gates.double(), F.softmax(torch.tanh(pre), dim=1), rtol=1e-5, atol=1e-6)
