"""Conversion of reference-implementation state_dicts.

The fixture is a state_dict with the reference's key names and shapes, and ``reference_forward``
re-computes that implementation's forward pass from it, written from reading its source
(conv0-BN-ReLU stem; blocks bn0/conv0/bn1/conv1 with ``conv_reduce`` on the raw input; attention
on the block inputs of groups 1 and 2 and on the final BN-ReLU map; modules att2, att1, att0 then
the classifier; ``output_gate`` = Linear, BatchNorm1d, tanh, softmax; log-probabilities fused).
"""

import pytest
import torch
import torch.nn.functional as F

from ar_core import load_checkpoint
from ar_core.convert import main as convert_main


def reference_state_dict(depth=10, width=1, classes=5, ad=3, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, o, i, ks):
        sd[name] = torch.randn(o, i, ks, ks, generator=g) * (2.0 / (i * ks * ks)) ** 0.5

    def bn(name, c):
        sd[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(100)

    n = (depth - 4) // 6
    widths = [16 * width, 32 * width, 64 * width]
    conv("conv0.weight", 16, 3, 3)
    bn("bn0", 16)
    ni = 16
    for gi, no in enumerate(widths):
        for i in range(n):
            cin = ni if i == 0 else no
            p = f"group_{gi}.block_{i}"
            conv(f"{p}.conv0.weight", no, cin, 3)
            bn(f"{p}.bn0", cin)
            conv(f"{p}.conv1.weight", no, no, 3)
            bn(f"{p}.bn1", no)
            if cin != no:
                conv(f"{p}.conv_reduce.weight", no, cin, 1)
        ni = no
    bn("bn_g2", widths[2])
    sd["classifier.weight"] = torch.randn(classes, widths[2], generator=g) * 0.1
    sd["classifier.bias"] = torch.randn(classes, generator=g) * 0.1
    for i in [2 - j for j in range(ad)]:
        conv(f"att{i}.att_head.conv.weight", k, widths[i], 3)
        sd[f"att{i}.att_head.diag"] = (1 - torch.eye(k)).view(1, k, k)
        conv(f"att{i}.out_head.conv.weight", k * classes, widths[i], 3)
        conv(f"att{i}.score.conv.weight", k, widths[i], 3)
    sd["output_gate.gates.weight"] = torch.randn(ad + 1, widths[2], generator=g)
    bn("output_gate.bn", ad + 1)
    return sd


def reference_forward(sd, x, depth, ad, k, classes):
    def bn(t, name):
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    n = (depth - 4) // 6
    x = F.relu(bn(F.conv2d(x, sd["conv0.weight"], padding=1), "bn0"))
    block_input = {}
    for gi in range(3):
        for i in range(n):
            p = f"group_{gi}.block_{i}"
            stride = (1 if gi == 0 else 2) if i == 0 else 1
            a = F.relu(bn(x, f"{p}.bn0"))
            if i == 0:
                block_input[gi] = a
            y = F.relu(bn(F.conv2d(a, sd[f"{p}.conv0.weight"], stride=stride, padding=1), f"{p}.bn1"))
            z = F.conv2d(y, sd[f"{p}.conv1.weight"], padding=1)
            short = F.conv2d(x, sd[f"{p}.conv_reduce.weight"], stride=stride) if f"{p}.conv_reduce.weight" in sd else x
            x = z + short
    group2 = F.relu(bn(x, "bn_g2"))
    attended = [block_input[1], block_input[2], group2]
    outputs = []
    for i in [2 - j for j in range(ad)]:
        z = attended[i]
        b, _, h, w = z.shape
        mask = F.softmax(F.conv2d(z, sd[f"att{i}.att_head.conv.weight"], padding=1).view(b, k, h * w), 2)
        mask = mask.view(b, k, 1, h * w)
        out = (F.conv2d(z, sd[f"att{i}.out_head.conv.weight"], padding=1).view(b, k, classes, h * w) * mask).sum(3)
        score = (F.conv2d(z, sd[f"att{i}.score.conv.weight"], padding=1).view(b, k, 1, h * w) * mask).sum(3)
        score = F.softmax(torch.tanh(score), 1)
        outputs.append((out * score).sum(1, keepdim=True))
    pooled = F.avg_pool2d(group2, group2.shape[-1]).flatten(1)
    gates = torch.tanh(bn(pooled @ sd["output_gate.gates.weight"].T, "output_gate.bn"))
    outputs.append(F.linear(pooled, sd["classifier.weight"], sd["classifier.bias"]).unsqueeze(1))
    logp = F.log_softmax(torch.cat(outputs, 1), 2)
    return (logp * F.softmax(gates, 1).unsqueeze(2)).sum(1)


@pytest.mark.parametrize("ad,width,depth", [(3, 1, 10), (2, 2, 10), (1, 1, 16)])
def test_conversion_is_exact(tmp_path, ad, width, depth):
    sd = reference_state_dict(depth=depth, width=width, ad=ad)
    pt = tmp_path / "model.pt7"
    torch.save({"state_dict": sd, "epoch": 3, "training_time": 1.0}, pt)  # as the reference saves it
    out = tmp_path / "model.safetensors"
    convert_main(["--reference", str(pt), "--out", str(out)])
    model, meta = load_checkpoint(out)
    cfg = meta["config"]
    assert (cfg["depth"], cfg["width"], cfg["attention_depth"], cfg["attention_width"], cfg["kernel_size"]) == \
        (depth, width, ad, 2, 3)
    assert cfg["reference_layout"] is True and len(meta["classes"]) == 5
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = reference_forward(sd, x, depth, ad, 2, 5)
    assert (model(x) - expected).abs().max().item() <= 1e-5


def test_dataparallel_prefix_and_flags(tmp_path):
    sd = {f"module.{k}": v for k, v in reference_state_dict().items()}
    pt = tmp_path / "dp.pt"
    torch.save(sd, pt)
    out = tmp_path / "dp.safetensors"
    convert_main(["--reference", str(pt), "--out", str(out), "--classes", "5", "--attention-width", "2"])
    assert load_checkpoint(out)[1]["config"]["num_classes"] == 5


def test_class_names_are_read_one_per_line(tmp_path):
    pt = tmp_path / "m.pt"
    torch.save(reference_state_dict(), pt)
    names = ["pickup truck", "aquarium fish", "maple tree", "sweet pepper", "cat"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n\n")  # names with spaces, blank lines at the end
    out = tmp_path / "o.safetensors"
    convert_main(["--reference", str(pt), "--out", str(out), "--class-names", str(tmp_path / "names.txt")])
    assert load_checkpoint(out)[1]["classes"] == names
    with pytest.raises(SystemExit, match="error: cannot read --class-names: .*missing.txt"):
        convert_main(["--reference", str(pt), "--out", str(out), "--class-names", str(tmp_path / "missing.txt")])


def test_contradicting_flag_is_an_error(tmp_path):
    pt = tmp_path / "m.pt"
    torch.save(reference_state_dict(), pt)
    with pytest.raises(SystemExit, match="--attention-depth 2 contradicts"):
        convert_main(["--reference", str(pt), "--out", str(tmp_path / "o.safetensors"), "--attention-depth", "2"])


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pt = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, pt)
    with pytest.raises(SystemExit, match="weights_only"):
        convert_main(["--reference", str(pt), "--out", str(tmp_path / "o.safetensors")])


def test_not_a_reference_state_dict(tmp_path):
    pt = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, pt)
    with pytest.raises(SystemExit, match="not a reference WideResNetAttention"):
        convert_main(["--reference", str(pt), "--out", str(tmp_path / "o.safetensors")])


