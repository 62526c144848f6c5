"""Test-time augmentation names: one spelling everywhere, and the views each one averages."""

import pytest

from ar_core.tta import NAMES, TTA, of_checkpoint, resolve


@pytest.mark.parametrize("name, flip, shift, views", [
    ("none", False, 0, 1), ("flip", True, 0, 2), ("flip-shift1", True, 1, 10), ("flip-shift2", True, 2, 18),
    ("shift1", False, 1, 5),
])
def test_names_round_trip(name, flip, shift, views):
    t = TTA.parse(name)
    assert (t.flip, t.shift, t.views, t.name) == (flip, shift, views, name)


def test_every_listed_name_parses_to_itself_cheapest_first():
    assert [TTA.parse(n).name for n in NAMES] == list(NAMES)
    assert [TTA.parse(n).views for n in NAMES] == sorted(TTA.parse(n).views for n in NAMES)


@pytest.mark.parametrize("bad", ["mirror", "flip-flip", "shift0", "shift", "none-flip", "", "shift-1"])
def test_unknown_names_say_what_is_accepted(bad):
    with pytest.raises(ValueError, match="flip-shift2"):
        TTA.parse(bad)


def test_bools_and_checkpoints():
    assert TTA.parse(True) == TTA(flip=True) and TTA.parse(False) == TTA()
    assert of_checkpoint({}) == TTA() and of_checkpoint({"test_time_augmentation": "flip-shift1"}) == TTA(True, 1)
    assert resolve(None, {"test_time_augmentation": "flip"}) == TTA(True) and resolve("none", {"x": 1}) == TTA()


def test_captions_name_the_views():
    assert "mirror" in TTA(True).describe() and "18 views" in TTA(True, 2).describe()
    assert "±1 pixel " in TTA(False, 1).describe() and TTA().describe() == "a single view of the image"
