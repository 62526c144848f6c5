"""Datasets as whole uint8 tensors, decoded once and cached; augmentation on whole batches.

On a 2-core CPU, per-image PIL work in the training loop costs more than the network itself, so
every source (an ImageFolder tree, torchvision's CIFAR) becomes one (N, 3, H, W) uint8 tensor,
cached on disk in safetensors (keyed by a hash of the files' bytes), and batches are cropped and
flipped as tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Per-channel statistics of the training splits (docs/method.md, item 11).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# Part of every cache key: bump it when decoding changes, so stale tensors are never served.
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs), as uploads are
CACHE_VERSION = 3  # 2: folders decode as uploads do (EXIF, alpha, crop then resize); 3: tRNS transparency


@dataclass
class TensorDataset:
    """Images (N, 3, H, W) uint8, labels (N,) int64, and class names in label order."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "TensorDataset":
        return TensorDataset(self.images[index], self.labels[index], self.classes)


def cache_dir() -> Path:
    """Where decoded datasets are cached: $AR_CACHE_DIR, else ~/.cache/attend-rectify."""
    return Path(os.environ.get("AR_CACHE_DIR", Path.home() / ".cache" / "attend-rectify"))


def to_rgb(img):
    """A decoded PIL image → RGB as a person sees it: EXIF orientation applied, an animation's first
    frame, 16-bit and float greyscale rescaled to 8 bits, transparency over white. Uploads and image
    folders both go through here, so one file gives the model one input whichever way it comes."""
    from PIL import Image, ImageOps

    img.seek(0)
    img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # also a tRNS colour of RGB, L or P
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def fit_image(img, size: int = 32, mode: str = "center-crop"):
    """Resize an RGB PIL image to ``size`` x ``size``: centre-crop the shorter side, or pad it.

    Padding resizes first and pads the small image (edge colour: the image's mean), so a 1x50,000
    strip never becomes a 50,000x50,000 canvas.
    """
    from PIL import Image

    if mode == "center-crop":
        square = centre_square(img)
        s = square.width
        return square.resize((size, size), Image.BICUBIC if s > size else Image.NEAREST) if s != size else square
    if mode != "pad":
        raise ValueError(f"mode must be 'center-crop' or 'pad', got {mode!r}")
    small = _fit_inside(img, size)
    canvas = Image.new("RGB", (size, size), _mean_colour(small))
    canvas.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return canvas


def centre_square(img):
    """The centred square of the shorter side: what the centre crop keeps."""
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def pad_colour(img, size: int = 32) -> tuple[int, ...]:
    """The colour :func:`fit_image` pads ``img`` with for a ``size`` input (for views of the same square)."""
    return _mean_colour(_fit_inside(img, size))


def fitted_size(w: int, h: int, size: int) -> tuple[int, int]:
    """The (width, height) a ``w`` x ``h`` image takes inside a ``size`` square when padded: longer side ``size``."""
    scale = size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _fit_inside(img, size: int):
    """``img`` resized so its longer side is ``size`` (bicubic when shrinking, nearest when enlarging)."""
    from PIL import Image

    w, h = img.size
    nw, nh = fitted_size(w, h, size)
    scale = size / max(w, h)
    return img.resize((nw, nh), Image.BICUBIC if scale < 1 else Image.NEAREST) if (nw, nh) != (w, h) else img


def _mean_colour(img) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(0))


def to_uint8(img) -> torch.Tensor:
    """RGB PIL image → (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def pil_to_uint8(img, size: int = 32) -> torch.Tensor:
    """One image of a folder → (3, size, size) uint8: the pixels an upload of the same file gives with
    the centre crop (:func:`to_rgb`, :func:`fit_image`)."""
    return to_uint8(fit_image(to_rgb(img), size))


def _decode(data: bytes, name: Path, size: int) -> torch.Tensor:
    """One file of a folder, decoded as an upload is; a file that cannot be is named, with what to do."""
    import io

    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} pixels, more than the {MAX_PIXELS // 10**6} megapixel limit")
        return pil_to_uint8(img, size)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name.as_posix()} is not a usable image ({e}); remove, replace or downscale it") from e


def load_image_folder(root: str | Path, size: int = 32, use_cache: bool = True) -> TensorDataset:
    """An ImageFolder tree (``root/<class>/<image>``), sorted by path, as one uint8 tensor."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}; expected root/<class>/<image> files")
    classes, class_to_idx = find_classes(str(root))
    samples = sorted(make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS))
    if not samples:
        raise FileNotFoundError(f"{root} holds no images in class sub-folders")
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, classes, size]).encode())
    blobs = []
    for path, label in samples:
        data = Path(path).read_bytes()
        digest.update(os.path.relpath(path, root).encode())
        digest.update(data)
        blobs.append(data)
    cache = cache_dir() / f"imagefolder-{digest.hexdigest()[:24]}.safetensors"
    if use_cache and cache.is_file():
        from safetensors.torch import load_file

        t = load_file(str(cache))
        return TensorDataset(t["images"], t["labels"], classes)
    images = torch.stack([_decode(b, Path(os.path.relpath(p, root)), size) for b, (p, _) in zip(blobs, samples)])
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    if use_cache:
        from safetensors.torch import save_file

        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # one per process: DDP ranks write at once
        save_file({"images": images, "labels": labels}, str(tmp))
        tmp.replace(cache)
    return TensorDataset(images, labels, classes)


def load_torchvision_cifar(name: str, root: str | Path, train: bool, download: bool = True) -> TensorDataset:
    """torchvision's CIFAR10/CIFAR100 (downloaded into ``root`` when online)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    ds = cls(str(root), train=train, download=download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return TensorDataset(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_index, val_index): ``val_size`` images, the same share of every class, fixed by seed."""
    g = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1
    frac = val_size / len(labels)
    val = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val.append(idx[: round(frac * len(idx))])
    val_index = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_index] = False
    return torch.nonzero(mask).flatten(), val_index


def content_digest(dataset: "TensorDataset") -> str:
    """SHA-256 of a dataset's decoded pixels, labels and class names, in order: names the training
    images a checkpoint saw without naming the machine's paths (the order is the sorted-path order
    the split is carved from, so equal digests reproduce the same split)."""
    h = hashlib.sha256(json.dumps(list(dataset.classes)).encode())
    h.update(dataset.images.contiguous().numpy().tobytes())
    h.update(dataset.labels.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def index_digest(index: torch.Tensor) -> str:
    """SHA-256 of a split's image indices (int64, sorted), recorded beside the split's size and seed."""
    return hashlib.sha256(index.to(torch.int64).sort().values.numpy().tobytes()).hexdigest()


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4, cutout: int = 0) -> torch.Tensor:
    """Random crop of a reflect-padded image and random horizontal flip, for a whole batch.

    ``cutout``: also blank one ``cutout``-pixel square per image (centre uniform over the image, clipped
    at its border; DeVries & Taylor 2017) with the value 0, after the crop and flip.
    """
    b, c, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if cutout:
        cy = torch.randint(0, h, (b,), generator=generator)[:, None]
        cx = torch.randint(0, w, (b,), generator=generator)[:, None]
        ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
        inside_y = (ys >= cy - cutout // 2) & (ys < cy - cutout // 2 + cutout)
        inside_x = (xs >= cx - cutout // 2) & (xs < cx - cutout // 2 + cutout)
        out = out * ~(inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    return out.to(torch.uint8)


def folder_signature(root: str | Path) -> str:
    """A cheap fingerprint of a folder tree: each directory's relative path, modification time and
    number of entries (adding, removing or renaming a file changes its directory's time), from metadata
    alone. Whatever is cached from the folder's images is keyed by it, so a folder changed while a server
    runs is read again instead of being matched with stale results; a file overwritten in place under
    the same name is not noticed."""
    root = Path(root)
    h = hashlib.sha256()
    for where, dirs, files in os.walk(root):
        dirs.sort()
        h.update(f"{Path(where).relative_to(root)}\0{os.stat(where).st_mtime_ns}\0{len(files)}\n".encode())
    return h.hexdigest()[:16]


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` is reachable from this machine only."""
    return bool(address) and (address in ("localhost", "::1") or address.startswith("127."))


def data_roots(loopback: bool = False) -> list[Path]:
    """Folders a visitor may read datasets from: $AR_DATA_ROOTS (os.pathsep-separated) when set;
    otherwise the folder named by $AR_IMAGE_FOLDER, and the user's home only while the server
    listens on loopback (the operator is then the only visitor). Empty: no folder is readable."""
    named = os.environ.get("AR_DATA_ROOTS")
    if named:
        return [Path(p).expanduser() for p in named.split(os.pathsep) if p]
    roots = [Path(os.environ["AR_IMAGE_FOLDER"]).expanduser()] if os.environ.get("AR_IMAGE_FOLDER") else []
    return roots + ([Path.home()] if loopback else [])


def resolve_under(path: str | Path, roots: list[Path]) -> Path:
    """The real path of ``path`` if it lies inside one of ``roots`` (symlinks followed), else an error."""
    if not roots:
        raise PermissionError("this server reads no folders: the operator names them with AR_DATA_ROOTS")
    p = Path(path).expanduser()
    if ".." in p.parts:
        raise PermissionError(f"{path}: '..' is not allowed in a folder path")
    if not p.is_absolute():
        raise PermissionError(f"{path}: give an absolute path inside {', '.join(map(str, roots))}")
    try:
        real = p.resolve()
    except RuntimeError:  # a symlink loop
        raise FileNotFoundError(f"no folder at {path}") from None
    for root in roots:  # checked before existence, so outside paths cannot be probed
        r = root.resolve()
        if real == r or r in real.parents:
            if not real.exists():
                raise FileNotFoundError(f"no folder at {path}")
            return real
    raise PermissionError(f"{path} is outside the folders this server may read ({', '.join(map(str, roots))}); "
                          f"the operator can add folders with AR_DATA_ROOTS")
