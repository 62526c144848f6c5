"""The head atlas: rankings and per-head numbers on hand-made arrays, maps from real traces."""

import pytest
import torch

from ar_core import atlas as Atl
from ar_core.inference import inspect


def _cat():
    # 6 images, 2 heads; head 1's gate rises with the index, head 2 is the complement
    g1 = torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    return {"conf_gates/g": torch.stack([g1, 1 - g1], 1),
            "head_pred/g": torch.tensor([[0, 1], [0, 1], [1, 1], [1, 0], [1, 1], [1, 0]])}


def test_atlas_on_hand_made_arrays():
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    a = Atl.head_atlas(_cat(), labels, ["cat", "dog"], ["g", "network"], top=2)
    h1, h2 = a["layers"]["g"]
    assert a["top"] == 2 and h1["head"] == 1
    assert h1["top_indices"] == [5, 4] and h1["bottom_indices"] == [0, 1]
    assert h2["top_indices"] == [0, 1] and h2["bottom_indices"] == [5, 4]
    assert h1["top_gates"] == pytest.approx([0.9, 0.7])
    assert h1["top_classes"] == {"cat": 1, "dog": 1} and h2["top_classes"] == {"cat": 2}
    assert h1["accuracy"] == pytest.approx(5 / 6)  # right on images 0 to 4, wrong on 5
    assert h2["accuracy"] == pytest.approx(3 / 6)  # right on 2, 4 and 5
    assert h1["most_trusted_share"] == pytest.approx(0.5) and h2["most_trusted_share"] == pytest.approx(0.5)
    assert h1["gate_mean"] == pytest.approx(0.4666667) and h1["favourite_class"] == "dog"
    assert Atl.head_atlas({}, labels, ["cat", "dog"], ["network"]) == {}


def test_the_atlas_of_fewer_images_than_its_top_says_how_many_it_ranks():
    a = Atl.head_atlas(_cat(), torch.tensor([0, 0, 1, 1, 1, 0]), ["cat", "dog"], ["g", "network"], top=16)
    h1 = a["layers"]["g"][0]
    assert a["top"] == 6 and h1["top_indices"] == [5, 4, 3, 2, 1, 0] and h1["bottom_indices"] == [0, 1, 2, 3, 4, 5]


def test_maps_come_from_the_trace(tiny_model):
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    meta = {"classes": list("abcde")}
    t = inspect(tiny_model, images, meta, tta="none").trace
    maps = Atl.head_maps(tiny_model, images, meta, [4, 1], "group2", 1, tta="none")
    torch.testing.assert_close(maps, t.layers[1].attention_maps[[4, 1], 1])
    means = Atl.mean_maps(tiny_model, images, meta, [0, 2, 3], tta="none", batch_size=2)
    torch.testing.assert_close(means["group1"], t.layers[0].attention_maps[[0, 2, 3]].mean(0))
    assert set(means) == {"group1", "group2", "group3"}
    with pytest.raises(ValueError, match="no attended layer"):
        Atl.head_maps(tiny_model, images, meta, [0], "layer9", 0)
    assert Atl.sample(10, 4) == sorted(Atl.sample(10, 4)) and len(set(Atl.sample(10, 4))) == 4
    assert Atl.sample(3, 10) == [0, 1, 2]
