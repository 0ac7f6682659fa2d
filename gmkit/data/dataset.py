"""Training data as ``torch.utils.data`` data sets of examples: dicts of columns.

An example holds uint8 image tensors (C, H, W) under their column names (``image``, and for paired
data e.g. ``source``), ``label`` (int64) where the data has classes, and ``index`` (its position in
the data set). Images stay uint8 until the training device: ``to_float`` maps them to [-1, 1].

``CachedData`` reads rows of the on-disk cache (``cache.py``) with ``pread``: random access, nothing
held in memory. Streamed sources (``streams.py``) share the same interface.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import GmkitError

# A tensor of all the images bigger than this is refused: use ``batches`` instead.
MAX_TENSOR_BYTES = 4 << 30


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], on whatever device ``x`` is."""
    return x.float().div_(127.5).sub_(1.0)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


class ImageData:
    """What every training source offers; see ``CachedData`` and ``streams.StreamData``."""

    name: str = ""
    note: str = ""
    class_names: list[str] | None = None
    captions: list[list[str]] | None = None  # per example, its caption variants (text-to-image data)
    labels: torch.Tensor | None = None  # (N,) int64, where known up front
    image_columns: tuple[str, ...] = ("image",)
    shapes: dict[str, tuple[int, int, int]] = {}  # training (C, S, S) of each image column
    stored: int = 0  # stored side: larger than S when random crops are cut at training time
    streamed = False
    random_flip = False  # the loader mirrors half the training images
    random_crop = False  # the loader cuts random crops of the training size from the stored images
    build_seconds: float | None = None  # time the cache took to build in this process, if it did

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.shapes[self.image_columns[0]]

    @property
    def captioned(self) -> bool:
        return self.captions is not None

    @property
    def count(self) -> int | None:
        """Examples in the data set (None for a stream that does not say)."""
        return len(self)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def _finish(self, ex: dict) -> dict:
        """A raw uint8 batch -> float images in [-1, 1], centre-cropped to the training size."""
        out = dict(ex)
        for c in self.image_columns:
            out[c] = to_float(centre_crop(ex[c], self.shapes[c][-1]))
        return out

    def batches(self, batch_size: int = 256) -> Iterator[dict]:
        """Every example once, in order, as float batches on the CPU (for precomputation)."""
        raise NotImplementedError

    def tensors(self, k: int | None = None) -> dict:
        """The first ``k`` examples (all with None) as one batch: float images in [-1, 1], labels."""
        per = sum(int(np.prod(s)) for s in self.shapes.values()) * 4
        want = k if k is not None else self.count
        if want is None:
            raise GmkitError(f"{self.name}: a stream of unknown length; ask for a number of images")
        if want * per > MAX_TENSOR_BYTES:
            raise GmkitError(f"{self.name}: {want} images would need {want * per / 2**30:.1f} GiB as floats; "
                             "read them in batches")
        parts = []
        for b in self.batches(min(256, max(want, 1))):
            parts.append(b)
            if sum(len(p["index"]) for p in parts) >= want:
                break
        if not parts:
            raise GmkitError(f"{self.name}: no images")
        keys = [key for key in parts[0] if torch.is_tensor(parts[0][key])]
        return {key: torch.cat([p[key] for p in parts])[:want] for key in keys}

    def images(self, k: int | None = None) -> torch.Tensor:
        """The first ``k`` images (all with None), float (k, C, S, S) in [-1, 1]: for evaluation and previews."""
        return self.tensors(k)[self.image_columns[0]]


class CachedData(ImageData, torch.utils.data.Dataset):
    """A built cache folder, read row by row; picklable, so DataLoader workers open it themselves."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta = json.loads((self.path / "meta.json").read_text())
        self.meta = meta
        self.name, self.note = meta["name"], meta["note"]
        self.n, self.stored = meta["n"], meta["stored"]
        self.image_columns = tuple(meta["image_columns"])
        self.channels = {c: meta["channels"][c] for c in self.image_columns}
        self.shapes = {c: (self.channels[c], meta["size"], meta["size"]) for c in self.image_columns}
        self.class_names = meta["class_names"]
        label_file = self.path / "label.npy"
        self.labels = torch.from_numpy(np.load(label_file)) if label_file.is_file() else None
        self._captions: list | None = None
        self._fds: dict[str, int] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def captioned(self) -> bool:
        return (self.path / "captions.json").is_file()  # without reading them

    @property
    def captions(self) -> list[list[str]] | None:
        """Per example, its caption variants; read from disk on first use (only text-to-image needs them)."""
        if self._captions is None and (self.path / "captions.json").is_file():
            self._captions = json.loads((self.path / "captions.json").read_text())
        return self._captions

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"], state["_captions"] = {}, None  # file descriptors do not cross processes; each opens its own
        return state

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def _fd(self, column: str) -> int:
        fd = self._fds.get(column)
        if fd is None:
            fd = self._fds[column] = os.open(self.path / f"{column}.u8", os.O_RDONLY)
        return fd

    def _row_shape(self, column: str) -> tuple[int, int, int]:
        return (self.channels[column], self.stored, self.stored)

    def read_rows(self, column: str, indices: np.ndarray) -> np.ndarray:
        """uint8 rows (B, C, S', S') at ``indices``; contiguous runs read in one call."""
        shape = self._row_shape(column)
        row = int(np.prod(shape))
        out = np.empty((len(indices), *shape), np.uint8)
        flat = out.reshape(len(indices), row)
        fd = self._fd(column)
        order = np.argsort(indices, kind="stable")  # ascending offsets: the disk reads forward
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and indices[order[j + 1]] == indices[order[j]] + 1 and order[j + 1] == order[j] + 1:
                j += 1
            start = int(indices[order[i]])
            count = j - i + 1
            data = os.pread(fd, row * count, start * row)
            if len(data) != row * count:
                raise GmkitError(f"{self.path}: the cache is truncated; delete that folder to rebuild it")
            flat[order[i]:order[i] + count] = np.frombuffer(data, np.uint8).reshape(count, row)
            i = j + 1
        return out

    def __getitems__(self, indices) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"index out of range for {self.n} examples")
        batch = {c: torch.from_numpy(self.read_rows(c, idx)) for c in self.image_columns}
        if self.labels is not None:
            batch["label"] = self.labels[torch.from_numpy(idx)]
        batch["index"] = torch.from_numpy(idx)
        return batch

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}

    def batches(self, batch_size: int = 256) -> Iterator[dict]:
        for start in range(0, self.n, batch_size):
            yield self._finish(self.__getitems__(np.arange(start, min(start + batch_size, self.n))))
