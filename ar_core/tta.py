"""Test-time augmentation, by name: which views of an image a trace averages.

A checkpoint records the name its validation figure was measured with
(``meta["test_time_augmentation"]``); the evaluator, the analysis and the app resolve it here, so
they all average the same views. ``model.trace(x, flip=..., shift=...)`` does the averaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

# Every name the trainer, the evaluator and the app accept, cheapest first.
NAMES = ("none", "flip", "flip-shift1", "flip-shift2")


@dataclass(frozen=True)
class TTA:
    """Mirror views (``flip``) and translations by ±1..``shift`` pixels along each axis."""

    flip: bool = False
    shift: int = 0

    def __post_init__(self):
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {self.shift}")

    @property
    def name(self) -> str:
        parts = (["flip"] if self.flip else []) + ([f"shift{self.shift}"] if self.shift else [])
        return "-".join(parts) or "none"

    @property
    def views(self) -> int:
        """How many forward passes per image."""
        return (1 + 4 * self.shift) * (2 if self.flip else 1)

    def describe(self) -> str:
        """What every averaged number is, in words (for captions)."""
        if self.views == 1:
            return "a single view of the image"
        moved = f"the image moved by up to ±{self.shift} pixel{'s' if self.shift > 1 else ''} along each axis"
        if not self.shift:
            return "the mean over the image and its mirror image (the mirror's maps flipped back)"
        if not self.flip:
            return f"the mean over {self.views} views: {moved} (maps moved back)"
        return f"the mean over {self.views} views: {moved}, and the mirror image of each (maps moved back)"

    @classmethod
    def parse(cls, value: "TTALike") -> "TTA":
        """A TTA from itself, a name (``"flip-shift2"``) or a bool (True: flip, the old switch)."""
        if isinstance(value, TTA):
            return value
        if isinstance(value, bool):
            return cls(flip=value)
        if isinstance(value, str):
            flip, shift = False, 0
            for part in value.strip().lower().split("-"):
                if part == "flip" and not flip:
                    flip = True
                elif part.startswith("shift") and part[5:].isdigit() and not shift and int(part[5:]) > 0:
                    shift = int(part[5:])
                elif part != "none" or value.strip().lower() != "none":
                    raise ValueError(f"unknown test-time augmentation {value!r}; use one of {', '.join(NAMES)}")
            return cls(flip, shift)
        raise TypeError(f"test-time augmentation must be a name, a bool or a TTA, not {type(value).__name__}")


TTALike = Union[TTA, str, bool]


def of_checkpoint(meta: dict[str, Any]) -> TTA:
    """The augmentation a checkpoint's validation figure was measured with (none when unrecorded)."""
    return TTA.parse(meta.get("test_time_augmentation") or "none")


def resolve(tta: TTALike | None, meta: dict[str, Any]) -> TTA:
    """``tta`` as asked, or the checkpoint's own when None."""
    return of_checkpoint(meta) if tta is None else TTA.parse(tta)
