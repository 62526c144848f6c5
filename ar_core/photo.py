"""The part of a photo the model sees, at the photo's own resolution (for overlays on the original)."""

from __future__ import annotations

from .data import centre_square, pad_colour


def model_view(img, mode: str = "center-crop", max_side: int = 512, *, size: int):
    """The square region of an RGB PIL image that :func:`ar_core.data.fit_image` turns into the
    ``size`` x ``size`` model input.

    center-crop: the centred square of the shorter side; pad: the whole image centred on a square
    of the longer side, filled with the colour the model input is padded with. Downscaled to
    ``max_side`` when larger, so the attention maps upsample onto the photo's detail rather than
    onto 32x32 pixels.
    """
    from PIL import Image

    w, h = img.size
    if mode == "center-crop":
        square = centre_square(img)
    elif mode == "pad":
        square = Image.new("RGB", (max(w, h), max(w, h)), pad_colour(img, size))
        square.paste(img, ((square.width - w) // 2, (square.height - h) // 2))
    else:
        raise ValueError(f"mode must be 'center-crop' or 'pad', got {mode!r}")
    s = square.width
    return square.resize((max_side, max_side), Image.BICUBIC) if s > max_side else square
