"""Figure builders, called directly (no Streamlit)."""

import io

import numpy as np
import pytest
import torch

from app import figures

CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture
def traced(tiny_model):
    with torch.inference_mode():
        t = tiny_model.trace(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return t, image


def test_overlay_panels_shape_and_blend(traced):
    t, image = traced
    panels = figures.overlay_panels(image, t, 1, alpha=0.0, display_size=64)
    assert len(panels) == 3 and all(len(row) == 2 for row in panels)
    assert panels[0][0].shape == (64, 64, 3) and panels[0][0].dtype == np.uint8
    # alpha 0 shows the input alone; alpha 1 the colour map alone (brightest where attention peaks)
    np.testing.assert_array_equal(panels[0][0], panels[2][1])
    hot = figures.overlay_panels(image, t, 1, alpha=1.0, cmap="gray", display_size=32)[2][0]
    m = figures.upsample(t.layers[2].attention_maps[1, 0], 32)
    assert np.unravel_index(hot[..., 0].argmax(), (32, 32)) == np.unravel_index(m.argmax(), (32, 32))


def test_attention_grid_layout_and_png(traced):
    t, image = traced
    fig = figures.attention_grid(image, t, 0, CLASSES, alpha=0.5, cmap="viridis")
    axes = fig.get_axes()
    assert len(axes) == 3 * 2
    top = CLASSES[int(t.layers[0].head_hypotheses[0, 0].argmax())]
    assert axes[0].get_title().startswith(top) and "g=" in axes[0].get_title()
    png = figures.figure_to_png(fig, scale=0.5)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_png_is_72_dpi_per_scale_and_cropped_when_tight():
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(4, 2))
    ax = fig.add_axes((0.4, 0.4, 0.2, 0.2))  # a small panel in a wide empty figure
    ax.imshow(np.zeros((8, 8)))
    ax.set_axis_off()
    full = Image.open(io.BytesIO(figures.figure_to_png(fig, scale=110 / 72)))
    tight = Image.open(io.BytesIO(figures.figure_to_png(fig, scale=110 / 72, tight=True)))
    assert full.size == (440, 220)  # 4 x 2 inches at 110 dpi
    assert tight.size[0] < 0.4 * full.size[0] and tight.size[1] < 0.6 * full.size[1]


def test_attention_grid_refuses_baseline(traced):
    t, image = traced
    t.layers = []
    with pytest.raises(ValueError, match="AD = 0"):
        figures.attention_grid(image, t, 0, CLASSES)


def test_prediction_figure_panels(traced):
    t, _ = traced
    fig = figures.prediction_figure(t, 0, CLASSES, k=3)
    assert len(fig.data) == 2 + 3  # fused, network, three layers
    fused = fig.data[0]
    p = torch.softmax(t.output[0], 0)
    assert fused.y[-1] == CLASSES[int(p.argmax())]
    assert fused.x[-1] == pytest.approx(float(p.max()))


def test_gate_figures_hold_the_gates(traced):
    t, _ = traced
    conf = figures.confidence_gates_figure(t, 1, CLASSES)
    np.testing.assert_allclose(conf.data[2].y, t.layers[2].confidence_gates[1].numpy())
    gg = figures.global_gates_figure(t, 1)
    np.testing.assert_allclose(gg.data[0].y, t.global_gates[1].numpy())
    assert len(gg.data[0].x) == 4


def test_contributions_sum_to_the_fused_score(traced):
    t, _ = traced
    fig = figures.contributions_figure(t, 0, CLASSES, [1, 3])
    for trace_, c in zip(fig.data, [1, 3]):
        *terms, total = trace_.y
        assert sum(terms) == pytest.approx(float(t.output[0, c]), abs=1e-5)
        assert total == pytest.approx(float(t.output[0, c]), abs=1e-5)


def test_contributions_under_flip_are_labelled_as_the_mean_of_the_views(tiny_model):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        single, flipped = tiny_model.trace(x), tiny_model.trace(x, flip=True)
    assert figures.contributions_figure(single, 0, CLASSES, [2]).layout.yaxis.title.text == "g_O · log p"
    fig = figures.contributions_figure(flipped, 0, CLASSES, [2])
    assert fig.layout.yaxis.title.text == "mean over image and mirror of g_O · log p"
    own, mirror = flipped.views
    terms = np.asarray(fig.data[0].y[:-1])
    np.testing.assert_allclose(terms, ((own.contributions + mirror.contributions) / 2)[0, :, 2].numpy(), atol=1e-6)
    # the bars are not the mean gate times the mean log-probability (what "g · log p" would mean)
    gate = (own.global_gates + mirror.global_gates)[0] / 2
    logp = torch.stack([v.contributions[0, :, 2] / v.global_gates[0] for v in (own, mirror)]).mean(0)
    assert not np.allclose(terms, (gate * logp).numpy(), atol=1e-6)
    # the global gates shown are the views' mean, and say so
    assert figures.global_gates_figure(single, 0).layout.yaxis.title.text == "global gate g_O"
    gg = figures.global_gates_figure(flipped, 0)
    assert gg.layout.yaxis.title.text == "g_O, mean over 2 views"
    np.testing.assert_allclose(gg.data[0].y, gate.numpy(), atol=1e-6)


def test_heatmap_and_attribution_figure(traced):
    t, image = traced
    hm = figures.attention_heatmap(t, 0, 1, 1, CLASSES)
    np.testing.assert_allclose(np.asarray(hm.data[0].z), t.layers[1].attention_maps[0, 1].numpy())
    fig = figures.attribution_figure(image, {"group3": np.random.rand(32, 32)}, {"Saliency": np.random.rand(32, 32)})
    assert len(fig.get_axes()) == 3


def test_blend_mixes_each_rescaled_map_over_its_image():
    import matplotlib

    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    maps = np.array([[[0.0, 1.0], [2.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]]])
    np.testing.assert_array_equal(figures.blend(image, maps, 0.0, "gray"), np.broadcast_to(image, (2, 2, 2, 3)))
    top = figures.blend(image, maps, 1.0, "jet")
    want = (matplotlib.colormaps["jet"](np.array([[0, 0.25], [0.5, 1]]))[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(top[0], want)
    half = figures.blend(image, maps, 0.5, "gray")[1]  # a constant map is 0 everywhere: black at half strength
    np.testing.assert_array_equal(half, np.full((2, 2, 3), 50, dtype=np.uint8))
