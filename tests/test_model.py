"""The model against a direct re-computation of docs/method.md, and its contracts."""

import threading

import pytest
import torch
import torch.nn.functional as F

from ar_core import ModelConfig, WideResNet, build_model, inter_head_regularizer
from conftest import randomize_bn


def _x(n=3, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_maps_and_gates_are_distributions(tiny_model):
    t = tiny_model.trace(_x())
    assert [l.name for l in t.layers] == ["group1", "group2", "group3"]
    assert t.sources == ["group1", "group2", "group3", "network"]
    for layer, size in zip(t.layers, (32, 16, 8)):
        assert layer.attention_maps.shape == (3, 2, size, size)
        assert layer.head_hypotheses.shape == (3, 2, 5)
        torch.testing.assert_close(layer.attention_maps.sum((2, 3)), torch.ones(3, 2))
        torch.testing.assert_close(layer.confidence_gates.sum(1), torch.ones(3))
        assert (layer.attention_maps >= 0).all() and (layer.confidence_gates >= 0).all()
    assert t.global_gates.shape == (3, 4)
    torch.testing.assert_close(t.global_gates.sum(1), torch.ones(3))
    assert t.contributions.shape == (3, 4, 5)


def test_equations_match_direct_recomputation(tiny_model):
    """Every quantity of the trace equals docs/method.md written out with explicit loops."""
    x = _x()
    t = tiny_model.trace(x)
    feats = tiny_model.backbone(x)
    K, M = 2, 5
    hyps = []
    for layer in t.layers:
        mod = tiny_model.attention[layer.name]
        Z = feats[layer.name]
        B, _, h, w = Z.shape
        a = F.conv2d(Z, mod.attention_head.weight)
        O = F.conv2d(Z, mod.output_head.weight)
        s = F.conv2d(Z, mod.confidence_gate.weight)
        for b in range(B):
            H = torch.stack([torch.exp(a[b, k]) / torch.exp(a[b, k]).sum() for k in range(K)])  # [1]
            torch.testing.assert_close(layer.attention_maps[b], H)
            o_k = torch.stack([torch.stack([(H[k] * O[b, k * M + m]).sum() for m in range(M)])
                               for k in range(K)])  # [2]
            torch.testing.assert_close(layer.head_hypotheses[b], o_k)
            pre = torch.stack([(s[b, k] * H[k]).sum() for k in range(K)])
            torch.testing.assert_close(layer.gate_pre_tanh[b], pre)
            score = torch.tanh(pre)
            g = torch.exp(score) / torch.exp(score).sum()  # [3]
            torch.testing.assert_close(layer.confidence_gates[b], g)
            torch.testing.assert_close(layer.hypothesis[b], (g[:, None] * o_k).sum(0))  # [4]
        hyps.append(layer.hypothesis)
    gg = tiny_model.global_gate
    pooled = feats["last"].mean((2, 3))
    pre = pooled @ gg.linear.weight.T
    bn = (pre - gg.bn.running_mean) / torch.sqrt(gg.bn.running_var + gg.bn.eps) * gg.bn.weight + gg.bn.bias
    torch.testing.assert_close(t.global_pre_tanh, bn)
    g_O = torch.softmax(torch.tanh(bn), 1)  # [5]
    torch.testing.assert_close(t.global_gates, g_O)
    sources = hyps + [feats["logits"]]
    fused = sum(g_O[:, s:s + 1] * torch.log_softmax(o, 1) for s, o in enumerate(sources))  # [6]
    torch.testing.assert_close(t.output, fused)
    torch.testing.assert_close(t.contributions.sum(1), t.output)


def test_forward_and_trace_agree(tiny_model):
    x = _x()
    assert (tiny_model(x) - tiny_model.trace(x).output).abs().max() <= 1e-6


def test_flip_trace_is_the_mean_of_the_image_and_its_mirror(tiny_model):
    """Flip TTA: every tensor is the mean of both views, the mirror's maps flipped back first."""
    x = _x()
    with torch.no_grad():
        t, own, mirror = tiny_model.trace(x, flip=True), tiny_model.trace(x), tiny_model.trace(x.flip(3))
    assert len(t.views) == 2 and not own.views
    torch.testing.assert_close(t.output, (own.output + mirror.output) / 2)
    torch.testing.assert_close(t.net_output, (own.net_output + mirror.net_output) / 2)
    torch.testing.assert_close(t.global_gates, (own.global_gates + mirror.global_gates) / 2)
    for l, (a, b) in enumerate(zip(own.layers, mirror.layers)):
        torch.testing.assert_close(t.layers[l].attention_maps, (a.attention_maps + b.attention_maps.flip(3)) / 2)
        torch.testing.assert_close(t.views[1].layers[l].attention_maps, b.attention_maps.flip(3))
        torch.testing.assert_close(t.layers[l].confidence_gates, (a.confidence_gates + b.confidence_gates) / 2)
        torch.testing.assert_close(t.layers[l].gate_pre_tanh, (a.gate_pre_tanh + b.gate_pre_tanh) / 2)
        torch.testing.assert_close(t.layers[l].attention_maps.sum((2, 3)), torch.ones(3, 2))
    torch.testing.assert_close(t.global_pre_tanh, (own.global_pre_tanh + mirror.global_pre_tanh) / 2)
    assert t.map(lambda u: u[1:]).global_pre_tanh.shape == (2, 4)
    # what makes the averaged trace readable as a single one
    torch.testing.assert_close(t.contributions.sum(1), t.output)
    torch.testing.assert_close(t.global_gates.sum(1), torch.ones(3))
    assert t.map(lambda u: u[:1]).views[1].output.shape == (1, 5)


def test_shift_trace_averages_every_moved_view_and_aligns_its_maps(tiny_model):
    """flip x shift 1: ten views (image, four 1-pixel shifts, and their mirrors), in one batch."""
    from ar_core.model import shifted, translate_maps, tta_offsets

    x = _x()
    assert tta_offsets(1) == [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)] and len(tta_offsets(2)) == 9
    with torch.no_grad():
        t = tiny_model.trace(x, flip=True, shift=1)
        own = tiny_model.trace(x)
        down = tiny_model.trace(shifted(x, 1, 0, 1))
        down_mirror = tiny_model.trace(shifted(x, 1, 0, 1).flip(3))
    assert len(t.views) == 10
    torch.testing.assert_close(t.views[0].output, own.output)  # the image itself comes first
    torch.testing.assert_close(t.views[2].output, down.output)
    torch.testing.assert_close(t.views[7].output, down_mirror.output)
    for l in range(3):
        torch.testing.assert_close(t.views[2].layers[l].attention_maps,
                                   translate_maps(down.layers[l].attention_maps, 1, 0, x.shape[-2:]))
        torch.testing.assert_close(t.layers[l].attention_maps.sum((2, 3)), torch.ones(3, 2))
    every = torch.stack([v.output for v in t.views])
    torch.testing.assert_close(t.output, every.mean(0))
    torch.testing.assert_close(t.contributions.sum(1), t.output)


def test_shifted_views_and_their_maps_move_by_whole_pixels():
    from ar_core.model import shifted, translate_maps

    x = torch.arange(64.0).view(1, 1, 8, 8)
    torch.testing.assert_close(shifted(x, 1, 0, 2)[0, 0, :7], x[0, 0, 1:])  # content moves up one row
    torch.testing.assert_close(shifted(x, 0, -2, 2)[0, 0, :, 2:], x[0, 0, :, :6])  # right two columns
    delta = torch.zeros(1, 1, 8, 8)
    delta[0, 0, 3, 3] = 1
    back = translate_maps(delta, 1, 0, (8, 8))  # seen one row up in the shifted view: one row down here
    assert back[0, 0].nonzero().tolist() == [[4, 3]] and back.sum() == 1
    coarse = translate_maps(torch.full((1, 1, 4, 4), 1 / 16), 2, 0, (8, 8))  # half a map pixel per input pixel
    torch.testing.assert_close(coarse.sum(), torch.tensor(1.0))
    assert (coarse[0, 0, 0] == 0).all()  # the top map row came from outside the view


def test_training_mode_returns_regulariser(tiny_model):
    tiny_model.train()
    out, reg = tiny_model(_x())
    assert out.shape == (3, 5) and reg.ndim == 0 and reg > 0


def test_regulariser_matches_definition():
    H = torch.rand(2, 3, 4, 4)
    H = H / H.sum((2, 3), keepdim=True)
    P = F.avg_pool2d(H, 2).flatten(2)
    expected = torch.stack([((P[b] @ P[b].T) * (1 - torch.eye(3))) ** 2 for b in range(2)]).mean()
    torch.testing.assert_close(inter_head_regularizer(H), expected)


def test_regulariser_zero_for_disjoint_positive_for_identical():
    disjoint = torch.zeros(1, 4, 4, 4)
    for k, (i, j) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):  # different 2x2 cells
        disjoint[0, k, i, j] = 1.0
    assert inter_head_regularizer(disjoint) == 0
    same = torch.zeros(1, 4, 4, 4)
    same[0, :, 1, 1] = 1.0
    assert inter_head_regularizer(same) > 0


def test_model_regulariser_is_lambda_times_mean(tiny_model):
    x = _x()
    tiny_model.train()  # train-mode BN: the maps must be recomputed in train mode too
    _, reg = tiny_model(x)
    maps = [tiny_model.attention[n](f)[0] for n, f in tiny_model.backbone(x).items() if n in tiny_model.attend]
    expected = 1e-3 * torch.stack([inter_head_regularizer(h) for h in maps]).mean()
    torch.testing.assert_close(reg, expected)


def test_ad0_equals_plain_wrn():
    torch.manual_seed(0)
    model = randomize_bn(build_model(ModelConfig(num_classes=5, depth=10, width=1, attention_depth=0))).eval()
    plain = WideResNet(depth=10, width=1, num_classes=5).eval()
    plain.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items()})
    x = _x()
    assert model.global_gate is None and len(model.attention) == 0
    torch.testing.assert_close(model(x), torch.log_softmax(plain(x)["logits"], 1), rtol=0, atol=1e-6)
    assert model.trace(x).sources == ["network"]
    assert model.trace(x).global_pre_tanh.shape == (3, 0)  # no global gate, so no tanh to feed


@pytest.mark.parametrize("ad", [1, 2])
def test_attention_depth_places_modules_from_the_top(ad):
    model = build_model(ModelConfig(num_classes=5, depth=10, width=1, attention_depth=ad))
    assert model.attend == ("group1", "group2", "group3")[3 - ad:]
    assert model.eval().trace(_x(1)).global_gates.shape == (1, ad + 1)


def test_kernel_size_3_and_channels_last(tiny_config):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**tiny_config.to_dict(), "kernel_size": 3})
    model = randomize_bn(build_model(cfg)).eval()
    assert model.attention["group1"].attention_head.weight.shape[-1] == 3
    x = _x()
    ref = model(x)
    cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    for layer in model.trace(x).layers:  # the 3x3 path exposes what its gates' tanh receives too
        torch.testing.assert_close(layer.confidence_gates, torch.softmax(torch.tanh(layer.gate_pre_tanh), 1))


def test_forward_stores_nothing_on_modules(tiny_model):
    before = {id(m): set(vars(m)) for m in tiny_model.modules()}
    tiny_model.trace(_x())
    tiny_model.train()(_x())
    assert {id(m): set(vars(m)) for m in tiny_model.modules()} == before


def test_threads_give_sequential_results(tiny_model):
    xs = [_x(2, seed=s) for s in range(8)]
    with torch.inference_mode():
        expected = [tiny_model.trace(x) for x in xs]
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        with torch.inference_mode():
            for _ in range(3):
                results[i] = tiny_model.trace(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got, want in zip(results, expected):
        assert torch.equal(got.output, want.output)
        assert torch.equal(got.global_gates, want.global_gates)
        for gl, wl in zip(got.layers, want.layers):
            assert torch.equal(gl.attention_maps, wl.attention_maps)
            assert torch.equal(gl.confidence_gates, wl.confidence_gates)


def test_resnet18_backbone_trains():
    """The same modules attach to torchvision's ResNet-18 by layer name, and it learns."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", num_classes=4, attention_depth=3, attention_width=2))
    assert model.attend == ("layer2", "layer3", "layer4")
    x = torch.randn(16, 3, 64, 64)
    y = torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(8):
        out, reg = model(x)
        loss = F.nll_loss(out, y) + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7
    t = model.eval().trace(x[:2])
    assert [l.attention_maps.shape[-1] for l in t.layers] == [8, 4, 2]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="6n\\+4"):
        build_model(ModelConfig(depth=15))
    with pytest.raises(ValueError, match="attention_depth"):
        ModelConfig(attention_depth=4)
    with pytest.raises(ValueError, match="kernel_size"):
        ModelConfig(kernel_size=5)
