"""Broken and hostile inputs, generated here: each gives a correct result or one clear error.

Limits set on purpose (ar_core.inference): uploads up to 50 MB (also .streamlit/config.toml),
images up to 40 megapixels, refused from the header before any pixel is decoded.
"""

import io
import json
import pickle
import resource
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ar_core
from ar_core import CheckpointError, inference as I


def _save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_claiming(width, height):
    """A few hundred bytes whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _rgb(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _exif_rotated():
    exif = Image.Exif()
    exif[0x0112] = 8
    return _save(_rgb(48, 24), "JPEG", exif=exif)


def _animated(fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)


def _multipage_tiff():
    pages = [_rgb(20, 20, s) for s in range(3)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _palette_transparent():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return _save(img, "PNG", transparency=0)


OK, ERR = "ok", "error"
CASES = {
    # name: (bytes, expected outcome, text the error must contain)
    "empty file": (b"", ERR, "empty"),
    "random bytes named .png": (np.random.default_rng(0).bytes(4096), ERR, "not an image"),
    "plain text": (b"hello, I am a text file\n" * 20, ERR, "not an image"),
    "html": (b"<!doctype html><html><body><script>alert(1)</script></body></html>", ERR, "not an image"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
            ERR, "not an image"),
    "pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF", ERR, "not an image"),
    "truncated png": (_save(_rgb(64, 64), "PNG")[:300], ERR, "truncated or damaged"),
    "truncated jpeg": (_save(_rgb(64, 64), "JPEG")[:400], ERR, "truncated or damaged"),
    "decompression bomb": (_png_claiming(100_000, 100_000), ERR, "megapixel limit"),
    "20000x20000 image": (_png_claiming(20_000, 20_000), ERR, "megapixel limit"),
    "1x50000 strip": (_save(_rgb(50_000, 1), "PNG"), OK, ""),
    "1x1 pixel": (_save(_rgb(1, 1), "PNG"), OK, ""),
    "16-bit greyscale": (_save(Image.fromarray((np.arange(1024).reshape(32, 32) * 64).astype(np.uint16)), "PNG"), OK, ""),
    "palette with transparency": (_palette_transparent(), OK, ""),
    "LA": (_save(_rgb(20, 20).convert("LA"), "PNG"), OK, ""),
    "1-bit": (_save(_rgb(20, 20).convert("1"), "PNG"), OK, ""),
    "CMYK jpeg": (_save(_rgb(20, 20).convert("CMYK"), "JPEG"), OK, ""),
    "I;16 tiff": (_save(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)), "TIFF"), OK, ""),
    "float tiff": (_save(Image.fromarray(np.random.default_rng(1).random((8, 8)).astype(np.float32)), "TIFF"), OK, ""),
    "animated gif": (_animated("GIF"), OK, ""),
    "animated webp": (_animated("WEBP"), OK, ""),
    "EXIF-rotated jpeg": (_exif_rotated(), OK, ""),
    "multi-page tiff": (_multipage_tiff(), OK, ""),
    "over the upload limit": (b"\x89PNG\r\n\x1a\n" + b"\x00" * (I.MAX_UPLOAD_BYTES + 1), ERR, "limit is 50 MB"),
    "bmp": (_save(_rgb(33, 17), "BMP"), OK, ""),
    "ico named png": (_save(Image.new("RGB", (16, 16)), "ICO"), ERR, "supported formats"),
    "grey jpeg": (_save(_rgb(40, 40).convert("L"), "JPEG"), OK, ""),
    "huge palette gif frame": (_save(_rgb(300, 200).convert("P"), "GIF"), OK, ""),
    "png with lying chunk crc": (_save(_rgb(8, 8), "PNG")[:40] + b"\x00\x00\x00\x00" + _save(_rgb(8, 8), "PNG")[44:],
                                 ERR, "png with lying chunk crc"),
    "zero-length idat": (_png_claiming(8, 8)[:33] + b"\x00\x00\x00\x00IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
                         + b"\x00\x00\x00\x00IEND\xaeB`\x82", ERR, "truncated or damaged"),
}


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_library_gives_a_result_or_a_clear_error(name):
    data, expected, text = CASES[name]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        img = I.fit_image(I.load_image(data, name), 32, "pad")
        outcome = OK
        assert img.size == (32, 32) and img.mode == "RGB"
        img = I.fit_image(I.load_image(data, name), 32, "center-crop")
        assert img.size == (32, 32)
    except I.ImageError as e:
        outcome = ERR
        assert name in str(e) and text in str(e), str(e)
    assert outcome == expected
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"{name}: peak memory grew by {grown_mb:.0f} MB"


def test_exif_rotation_and_first_frames_are_right():
    assert I.load_image(_exif_rotated()).size == (24, 48)
    assert np.asarray(I.load_image(_animated("WEBP")))[8, 8].tolist()[0] > 150  # the red first frame
    first = np.asarray(I.load_image(_multipage_tiff()))
    np.testing.assert_array_equal(first, np.asarray(_rgb(20, 20, 0)))


def test_every_case_in_the_app_shows_a_result_or_an_error(tmp_path, monkeypatch):
    """One browser session takes every case in turn: never an exception, always an answer."""
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT, randomize_bn

    torch.manual_seed(0)
    cfg = ar_core.ModelConfig(num_classes=3, depth=10, width=1, attention_width=2)
    ckpt = ar_core.save_checkpoint(randomize_bn(ar_core.build_model(cfg)).eval(), tmp_path / "h.safetensors",
                                   {"classes": ["a", "b", "c"]})
    monkeypatch.setenv("AR_CHECKPOINT", str(ckpt))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.selectbox(key="model_label").set_value("h (AR_CHECKPOINT)").run()
    for name, (data, expected, text) in CASES.items():
        at.file_uploader(key="images").set_value([(f"{name}.png", data, "image/png")]).run()
        assert not at.exception, name
        errors = [e.value for e in at.error]
        if expected == ERR:
            assert len(errors) == 1 and name in errors[0] and text in errors[0], (name, errors)
        else:
            assert not errors, (name, errors)
            assert at.session_state["result"]["name"] == f"{name}.png"


# ------------------------------------------------------------------------------------ checkpoints

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"state_dict": _RunsCode(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError, match="pickle"):
        ar_core.load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="pickle"):
        ar_core.load_checkpoint(evil.read_bytes())
    zipped = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode(str(marker))}, zipped)
    with pytest.raises(CheckpointError, match="pickle"):
        ar_core.load_checkpoint(zipped)
    with pytest.raises(SystemExit, match="weights_only"):
        from ar_core.convert import main

        main(["--reference", str(zipped), "--out", str(tmp_path / "o.safetensors")])
    assert not marker.exists()


def test_huge_header_is_refused_before_reading(tmp_path):
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="header claims"):
        ar_core.load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="header claims"):
        ar_core.checkpoint.read_metadata(bad)


def test_random_bytes_and_missing_metadata(tmp_path, tiny_model):
    with pytest.raises(CheckpointError):
        ar_core.load_checkpoint(np.random.default_rng(0).bytes(10_000))
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    no_config = tmp_path / "noconfig.safetensors"
    save_file(tensors, str(no_config), metadata={"format": "attend-rectify/1", "meta": json.dumps({})})
    with pytest.raises(CheckpointError, match="damaged config"):
        ar_core.load_checkpoint(no_config)
    bad_meta = tmp_path / "badmeta.safetensors"
    save_file(tensors, str(bad_meta), metadata={"format": "attend-rectify/1", "meta": "[1, 2]",
                                                "config": json.dumps(tiny_model.config.to_dict())})
    with pytest.raises(CheckpointError, match="damaged config or metadata"):
        ar_core.load_checkpoint(bad_meta)
    unknown = tmp_path / "unknown.safetensors"
    save_file(tensors, str(unknown), metadata={"format": "attend-rectify/1",
                                               "config": json.dumps({**tiny_model.config.to_dict(), "wings": 2})})
    with pytest.raises(CheckpointError, match="wings"):
        ar_core.load_checkpoint(unknown)
