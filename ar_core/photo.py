"""The part of a photo the model sees, at the photo's own resolution (for overlays on the original)."""

from __future__ import annotations

import numpy as np


def model_view(img, mode: str = "center-crop", max_side: int = 512):
    """The square region of an RGB PIL image that ``inference.fit_image`` turns into the model input.

    center-crop: the centred square of the shorter side; pad: the whole image centred on a square
    of the longer side, filled with its mean colour. Downscaled to ``max_side`` when larger, so the
    attention maps upsample onto the photo's detail rather than onto 32x32 pixels.
    """
    from PIL import Image

    w, h = img.size
    if mode == "center-crop":
        s = min(w, h)
        square = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    elif mode == "pad":
        s = max(w, h)
        fill = tuple(int(v) for v in np.asarray(img.resize((max(1, w // 8), max(1, h // 8)))).reshape(-1, 3).mean(0))
        square = Image.new("RGB", (s, s), fill)
        square.paste(img, ((s - w) // 2, (s - h) // 2))
    else:
        raise ValueError(f"mode must be 'center-crop' or 'pad', got {mode!r}")
    return square.resize((max_side, max_side), Image.BICUBIC) if s > max_side else square
