"""The part of a photo the model sees, at the photo's own resolution (for overlays on the original)."""

from __future__ import annotations

from .data import centre_square, fitted_size, pad_colour


def model_view(img, mode: str = "center-crop", max_side: int = 512, *, size: int):
    """The square region of an RGB PIL image that :func:`ar_core.data.fit_image` turns into the
    ``size`` x ``size`` model input.

    center-crop: the centred square of the shorter side; pad: the whole image placed as the model
    input places it (to the model pixel), on the colour the model input is padded with. Downscaled to
    ``max_side`` when larger, so the attention maps upsample onto the photo's detail rather than
    onto 32x32 pixels.
    """
    from PIL import Image

    w, h = img.size
    if mode == "center-crop":
        square = centre_square(img)
    elif mode == "pad":
        # The model input's own geometry, in photo pixels: the photo fills a rounded (sw, sh) of the square,
        # offset by whole model pixels, so each axis has its own photo pixels per model pixel.
        sw, sh = fitted_size(w, h, size)
        sx, sy = w / sw, h / sh
        # drawn at no more than max_side pixels a side: a 1x100,000 strip must not become a 100,000-pixel square
        f = min(1.0, max_side / (size * max(sx, sy)))
        photo = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC) if f < 1 else img
        canvas = Image.new("RGB", (max(1, round(size * sx * f)), max(1, round(size * sy * f))), pad_colour(img, size))
        canvas.paste(photo, (round((size - sw) // 2 * sx * f), round((size - sh) // 2 * sy * f)))
        side = max(canvas.size)
        square = canvas if canvas.width == canvas.height else canvas.resize((side, side), Image.BICUBIC)
    else:
        raise ValueError(f"mode must be 'center-crop' or 'pad', got {mode!r}")
    s = square.width
    return square.resize((max_side, max_side), Image.BICUBIC) if s > max_side else square
