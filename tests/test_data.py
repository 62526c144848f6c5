"""The uint8 data pipeline: ImageFolder decoding and its content-keyed cache, split, augmentation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ar_core import data as D

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 200, 40), (180, 60, 200)]


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)


def make_image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 4, size: int = 32,
                      seed: int = 0) -> dict[str, list[np.ndarray]]:
    """``root/<class>/<i>.png``: each class its own colour and stripe, plus per-image noise.

    Easy to tell apart (a tiny network learns them in a few steps), never two identical images.
    Returns the (H, W, 3) arrays written, by class, in file order.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for c, name in enumerate(classes):
        arrays = []
        for i in range(per_class):
            a = rng.integers(0, 60, (size, size, 3)) + np.array(COLOURS[c % len(COLOURS)]) * 0.7
            band = (c * size // len(classes)) % size
            a[:, band:band + max(2, size // 4)] = 255
            a = a.clip(0, 255).astype(np.uint8)
            write_png(root / name / f"{i:03d}.png", a)
            arrays.append(a)
        written[name] = arrays
    return written


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Keep the decoded-dataset cache out of the home folder."""
    monkeypatch.setenv("AR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------- load_image_folder

def test_image_folder_classes_labels_and_pixels(tmp_path):
    root = tmp_path / "set"
    written = make_image_folder(root, classes=("zebra", "ant", "mole"), per_class=3)
    ds = D.load_image_folder(root)
    assert ds.classes == ["ant", "mole", "zebra"]  # sorted, whatever the creation order
    assert ds.images.shape == (9, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for j, name in enumerate(ds.classes):  # 32x32 images come back bit-exact, in file order
        for i, a in enumerate(written[name]):
            assert torch.equal(ds.images[3 * j + i], torch.from_numpy(a).permute(2, 0, 1))


def test_image_folder_resizes_other_sizes(tmp_path):
    root = tmp_path / "set"
    make_image_folder(root, classes=("a", "b"), per_class=1)
    wide = np.zeros((40, 64, 3), np.uint8)
    wide[:, 16:48] = (10, 200, 30)  # the centre square survives the centre crop
    write_png(root / "b" / "wide.png", wide)
    write_png(root / "a" / "tiny.png", np.full((8, 8, 3), 77, np.uint8))
    ds = D.load_image_folder(root)
    assert ds.images.shape == (4, 3, 32, 32)
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(ds.images[1], torch.full((3, 32, 32), 77, dtype=torch.uint8))  # a/tiny.png, upscaled
    centre = ds.images[3][:, 4:28, 6:26].float().mean((1, 2))  # b/wide.png: its green centre
    torch.testing.assert_close(centre, torch.tensor([10.0, 200.0, 30.0]), atol=3, rtol=0)


def test_image_folder_size_argument(tmp_path):
    root = tmp_path / "set"
    make_image_folder(root, classes=("a", "b"), per_class=2)
    assert D.load_image_folder(root, size=16).images.shape == (4, 3, 16, 16)


def test_image_folder_cache_is_hit_and_keyed_by_content(tmp_path, cache_in_tmp, monkeypatch):
    root = tmp_path / "set"
    make_image_folder(root, classes=("a", "b"), per_class=3)
    first = D.load_image_folder(root)
    files = sorted(cache_in_tmp.glob("*.safetensors"))
    assert len(files) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache holds this folder")

    with monkeypatch.context() as m:
        m.setattr(D, "pil_to_uint8", no_decoding)
        again = D.load_image_folder(root)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.classes == first.classes

    changed = np.full((32, 32, 3), 5, np.uint8)
    write_png(root / "b" / "001.png", changed)  # same name, other bytes
    third = D.load_image_folder(root)
    files_after = sorted(cache_in_tmp.glob("*.safetensors"))
    assert len(files_after) == 2 and files[0] in files_after
    assert torch.equal(third.images[4], torch.from_numpy(changed).permute(2, 0, 1))
    assert torch.equal(third.images[:4], first.images[:4])
    assert not list(cache_in_tmp.glob("*.tmp"))


def test_image_folder_without_cache_writes_nothing(tmp_path, cache_in_tmp):
    root = tmp_path / "set"
    make_image_folder(root, classes=("a", "b"), per_class=1)
    D.load_image_folder(root, use_cache=False)
    assert not cache_in_tmp.exists() or not any(cache_in_tmp.iterdir())


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder"):
        D.load_image_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "x.png", np.zeros((4, 4, 3), np.uint8))  # no class folders
    with pytest.raises(FileNotFoundError):
        D.load_image_folder(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        D.load_image_folder(tmp_path / "empty")


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's first bytes)."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = ihdr[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.mark.parametrize("content, why", [
    (b"this is text, not an image", "cannot identify image file"),
    (_png_claiming(9000, 9000), "9000x9000 pixels, more than the 40 megapixel limit"),  # uploads' limit too
    (_png_claiming(20000, 20000), "decompression bomb"),  # past PIL's own limit: it refuses to open it
], ids=["text", "81-megapixels", "400-megapixels"])
def test_an_unusable_file_in_a_folder_is_named(tmp_path, cache_in_tmp, content, why):
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        write_png(tmp_path / "f" / c / "ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "f" / "b" / "broken.png").write_bytes(content)
    with pytest.raises(ValueError, match=r"^b/broken\.png is not a usable image \(.*" + why.replace("(", r"\(")
                       + r".*\); remove, replace or downscale it$"):
        D.load_image_folder(tmp_path / "f")


# ---------------------------------------------------------------- stratified_split

@pytest.fixture
def labels():
    """Unbalanced and shuffled: 40, 20 and 20 images of classes 0, 1, 2."""
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0] * 40 + [1] * 20 + [2] * 20)
    return y[torch.randperm(len(y), generator=g)]


def test_split_sizes_proportions_and_disjointness(labels):
    train, val = D.stratified_split(labels, 16, seed=0)
    assert len(val) == 16 and len(train) == 64
    assert torch.bincount(labels[val], minlength=3).tolist() == [8, 4, 4]  # 20 % of every class
    assert torch.bincount(labels[train], minlength=3).tolist() == [32, 16, 16]
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.equal(val, val.sort().values) and torch.equal(train, train.sort().values)


def test_split_is_fixed_by_the_seed(labels):
    a_train, a_val = D.stratified_split(labels, 16, seed=0)
    b_train, b_val = D.stratified_split(labels, 16, seed=0)
    assert torch.equal(a_val, b_val) and torch.equal(a_train, b_train)
    _, c_val = D.stratified_split(labels, 16, seed=1)
    assert not torch.equal(a_val, c_val)
    assert torch.bincount(labels[c_val], minlength=3).tolist() == [8, 4, 4]


# ---------------------------------------------------------------- augment

@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (24, 3, 8, 8), generator=g, dtype=torch.uint8)


def _candidates(image: torch.Tensor, pad: int):
    """Every crop of the reflect-padded image, flipped or not: what augment may return."""
    padded = np.pad(image.numpy(), ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    h, w = image.shape[1:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop[:, :, ::-1]


def test_augment_shape_dtype_and_seed(batch):
    out = D.augment(batch, torch.Generator().manual_seed(3))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert torch.equal(out, D.augment(batch, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, D.augment(batch, torch.Generator().manual_seed(4)))


def test_augment_is_a_crop_of_the_reflect_padded_image(batch):
    """Each output equals one of the (2·pad+1)² crops of its padded image, flipped or not, recomputed here."""
    pad = 2
    out = D.augment(batch, torch.Generator().manual_seed(5), pad=pad)
    chosen = []
    for image, result in zip(batch, out):
        matches = [key for key, crop in _candidates(image, pad) if np.array_equal(crop, result.numpy())]
        assert matches, "augment returned something that is no crop/flip of the padded image"
        chosen.append(matches[0])
    assert len({key[:2] for key in chosen}) > 5  # offsets vary across the batch
    assert {key[2] for key in chosen} == {False, True}  # both flipped and unflipped images


def test_augment_without_padding_is_identity_or_flip(batch):
    out = D.augment(batch, torch.Generator().manual_seed(6), pad=0)
    flipped = 0
    for image, result in zip(batch, out):
        if torch.equal(result, image):
            continue
        assert torch.equal(result, image.flip(-1))
        flipped += 1
    assert 0 < flipped < len(batch)


def test_cutout_blanks_one_clipped_square_per_image(batch):
    """With cutout, each image is the plain augmentation (same draws) with one square set to 0: a
    ``size``-pixel square when it lies inside, clipped at the border otherwise, and nothing else changed."""
    size, images = 4, batch.clamp(min=1)  # no pixel is 0 before the cutout
    plain = D.augment(images, torch.Generator().manual_seed(7))
    cut = D.augment(images, torch.Generator().manual_seed(7), cutout=size)
    h, w = images.shape[-2:]
    sides = set()
    for p, c in zip(plain, cut):
        zero = (c == 0).all(0)
        assert torch.equal(zero, (c == 0).any(0)), "all channels blanked together"
        assert torch.equal(c[:, ~zero], p[:, ~zero]), "pixels outside the square are untouched"
        ys, xs = torch.nonzero(zero, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        assert zero[y0:y1, x0:x1].all() and int(zero.sum()) == (y1 - y0) * (x1 - x0), "one rectangle"
        assert y1 - y0 == size or y0 == 0 or y1 == h, "a shorter side only where the square meets the border"
        assert x1 - x0 == size or x0 == 0 or x1 == w
        assert y1 - y0 <= size and x1 - x0 <= size
        sides.add((y1 - y0, x1 - x0))
    assert (size, size) in sides and len(sides) > 1  # whole squares and clipped ones both occur


# ---------------------------------------------------------------- normalize

def test_normalize():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = (0.5, 0.25, 0.2), (0.5, 0.25, 0.1)
    x = D.normalize(images, mean, std)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    expected = torch.tensor([(0 - 0.5) / 0.5, (1 - 0.25) / 0.25, (0.2 - 0.2) / 0.1]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected.expand(2, 3, 2, 2), atol=1e-6, rtol=0)


def test_normalize_with_cifar_stats_has_zero_mean_on_the_mean_colour():
    mean, std = D.STATS["cifar10"]
    colour = torch.tensor([round(m * 255) for m in mean], dtype=torch.uint8).view(1, 3, 1, 1)
    assert D.normalize(colour, mean, std).abs().max() < 0.01


def test_resolve_under_allows_only_named_roots(tmp_path):
    from ar_core.data import resolve_under

    root = tmp_path / "root"
    (root / "set" / "cat").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    assert resolve_under(root / "set", [root]) == (root / "set").resolve()
    with pytest.raises(PermissionError, match="outside the folders"):
        resolve_under(outside, [root])
    with pytest.raises(PermissionError, match="outside the folders"):
        resolve_under(root / "escape", [root])  # a symlink out of the root
    with pytest.raises(PermissionError, match="'..'"):
        resolve_under(f"{root}/set/../../secret", [root])
    with pytest.raises(PermissionError, match="absolute path"):
        resolve_under("set", [root])
    with pytest.raises(FileNotFoundError):
        resolve_under(root / "missing", [root])
    # outside the roots, a missing and an existing folder get the same answer: nothing to probe
    with pytest.raises(PermissionError, match="outside the folders"):
        resolve_under(tmp_path / "no-such-folder", [root])
    with pytest.raises(PermissionError, match="reads no folders"):
        resolve_under(root / "set", [])


def test_data_roots_from_environment(monkeypatch, tmp_path):
    import os

    from ar_core.data import data_roots

    monkeypatch.setenv("AR_DATA_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert data_roots() == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv("AR_DATA_ROOTS")
    monkeypatch.setenv("AR_IMAGE_FOLDER", str(tmp_path / "imgs"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # the home folder is readable only while the server listens on loopback
    assert data_roots(loopback=True) == [tmp_path / "imgs", tmp_path / "home"]
    assert data_roots() == data_roots(loopback=False) == [tmp_path / "imgs"]
    monkeypatch.delenv("AR_IMAGE_FOLDER")
    assert data_roots() == [] and data_roots(loopback=True) == [tmp_path / "home"]


@pytest.mark.parametrize("address, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True),
                                               ("::1", True), ("", False), (None, False), ("0.0.0.0", False),
                                               ("192.168.1.5", False), ("::", False)])
def test_is_loopback(address, loopback):
    from ar_core.data import is_loopback

    assert is_loopback(address) is loopback


def test_folder_signature_follows_added_removed_and_renamed_files(tmp_path):
    import os

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"x" * 10)
    first = D.folder_signature(tmp_path)
    assert D.folder_signature(tmp_path) == first  # nothing changed
    seen = {first}
    for change in (lambda: (tmp_path / "a" / "1.png").rename(tmp_path / "a" / "2.png"),
                   lambda: (tmp_path / "a" / "3.png").write_bytes(b"y"),
                   lambda: (tmp_path / "a" / "2.png").unlink(),
                   lambda: (tmp_path / "b").mkdir()):
        change()
        os.utime(tmp_path / "a", ns=(len(seen), len(seen)))  # a distinct time even on coarse clocks
        seen.add(D.folder_signature(tmp_path))
    assert len(seen) == 5


def test_a_file_in_a_folder_gives_the_model_what_its_upload_gives(tmp_path, cache_in_tmp):
    """One decoding for both ways in: a phone photo turned by EXIF, a transparent PNG, a wide photo
    larger and a thumbnail smaller than the model's input give the same pixels from a folder as uploaded."""
    import io

    from ar_core.inference import fit_image, load_image, to_uint8

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    rgba = Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA")
    files = {"a/phone.jpg": (photo, {"exif": exif.tobytes()}), "a/wide.png": (photo, {}),
             "b/sticker.png": (rgba, {}), "b/thumb.png": (photo.resize((20, 15)), {})}
    for name, (img, kw) in files.items():
        (tmp_path / "set" / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "set" / name, **kw)
    folder = D.load_image_folder(tmp_path / "set", size=32)
    for i, name in enumerate(sorted(files)):
        uploaded = to_uint8(fit_image(load_image((tmp_path / "set" / name).read_bytes(), name), 32))
        assert torch.equal(folder.images[i], uploaded), name
    assert load_image((tmp_path / "set" / "a/phone.jpg").read_bytes()).size == (48, 64)  # the EXIF turn applied
