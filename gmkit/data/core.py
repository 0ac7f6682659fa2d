"""``load_data(spec, ...)``: any training source by name, path or Hub id, as an ``ImageData``.

    mnist, digits, openmoji, mnist-captions, fashion-mnist   bundled (NAME:test picks a split)
    photos/                                                  a folder (class or split subfolders)
    shards/ or "shards/*.tar"                                webdataset-style tar shards
    saved/  (a datasets save_to_disk folder)                 Hugging Face data on disk
    org/name  or  hf:org/name                                a Hugging Face Hub dataset

A source is decoded once into the uint8 cache (``cache.py``) and read from there, or with
``stream=True`` (Hub datasets, tar shards) decoded on the fly by the loader's workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GmkitError, OptionError
from . import bundled
from .bundled import cache_dir  # noqa: F401  (other modules keep their cache files beside the data's)
from .cache import Plan, ensure
from .folders import IMAGE_SUFFIXES, folder_plan, list_images  # noqa: F401

BAD_IMAGE = ("skip", "error")


@dataclass
class DataOptions:
    """How a source becomes training data. Every field is a setting a command may expose."""
    split: str = "train"
    image_size: int | None = None  # square side; None: the first image's shorter side
    channels: int | None = None  # 1 or 3; None: grey when the first images all are
    columns: dict[str, str] = field(default_factory=dict)  # Hugging Face: {"image": col, "label": col, ...}
    config: str | None = None  # Hugging Face: the data set's configuration name
    stream: bool = False  # decode on the fly instead of caching (Hub datasets, tar shards)
    random_flip: bool = False  # training batches: mirror half the images (and aligned columns)
    random_crop: bool = False  # training batches: random crops from images stored 1/8 larger
    on_bad_image: str = "skip"  # skip (report by name) | error
    workers: int | None = None  # decode / loader worker processes; None: one per CPU core (at most 16)
    progress: bool = True

    def check(self) -> None:
        if self.on_bad_image not in BAD_IMAGE:
            raise OptionError("on_bad_image", f"must be skip or error, got {self.on_bad_image!r}")
        if self.image_size is not None and not 1 <= self.image_size <= 4096:
            raise OptionError("image_size", f"must be between 1 and 4096, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise OptionError("channels", f"must be 1 or 3, got {self.channels}")
        if self.workers is not None and self.workers < 0:
            raise OptionError("workers", f"must be >= 0, got {self.workers}")
        if not self.split or not isinstance(self.split, str):
            raise OptionError("split", "must name a split (train, test, ...)")

    def worker_count(self) -> int:
        return self.workers if self.workers is not None else min(16, os.cpu_count() or 1)


def data_names() -> list[str]:
    return bundled.available()


def _bundled_key(name: str, split: str, size: int | None) -> str:
    if split not in bundled.SPLITS + ("held-out", "heldout", "val", "validation"):
        raise GmkitError(f"{name}: no split {split!r} (train, test, all)")
    return f"bundled:{name}:{split}:{bundled.VERSION}:{size}"


def _bundled_plan(name: str, split: str, size: int | None) -> Plan:
    a = bundled.load(name, split, size)
    x = a.images

    def fetch(start: int, stop: int) -> list[dict]:
        return [{"image": x[i]} for i in range(start, stop)]

    return Plan(name=name, note=a.note, key=_bundled_key(name, split, size), n=len(x), fetch=fetch,
                describe=lambda i: f"{name} image {i}", labels=a.labels, class_names=a.class_names,
                captions=a.captions, size=x.shape[-1], channels=x.shape[1], in_process=True)


def _split_suffix(spec: str, split: str) -> tuple[str, str]:
    """``SOURCE:SPLIT`` -> (SOURCE, SPLIT) when SOURCE is a bundled name, an existing path or a Hub id."""
    if ":" not in spec or Path(spec).exists() or spec.startswith("hf:") and spec.count(":") == 1:
        return spec, split
    head, tail = spec.rsplit(":", 1)
    from .hf import looks_like_hub_id

    if head in bundled.NAMES or Path(head).exists() or looks_like_hub_id(head.removeprefix("hf:")):
        return head, tail
    return spec, split


def load_data(spec: str, split: str = "train", image_size: int | None = None, channels: int | None = None,
              on_error: str = "skip", **settings) -> "ImageData":  # noqa: F821
    """A source as training data; ``settings`` are further ``DataOptions`` fields."""
    return load(spec, DataOptions(split=split, image_size=image_size, channels=channels, on_bad_image=on_error,
                                  **settings))


def load(spec: str, opts: DataOptions):
    opts.check()
    spec, split = _split_suffix(spec, opts.split)
    kind, target = _kind(spec)
    if opts.columns and kind != "hf":
        raise OptionError("columns", "apply to Hugging Face datasets only")
    if opts.stream:
        return _stream(kind, target, split, opts)
    source_key = None
    if kind == "bundled":
        size = opts.image_size if target == "openmoji" else None
        source_key = _bundled_key(target, split, size)
        plan = lambda: _bundled_plan(target, split, size)  # noqa: E731  (loaded only on a cache miss)
    elif kind == "folder":
        plan = folder_plan(Path(target), split)
    elif kind == "tar":
        from .shards import tar_plan

        plan = tar_plan(target)
    else:
        from .hf import hf_plan

        plan = hf_plan(target, split, opts.config, opts.columns)
    return from_plan(plan, opts, source_key)


def from_plan(plan, opts: DataOptions, source_key: str | None = None):
    """Cached data from any ``Plan`` (``cache.py``): how a new kind of source joins the data layer.

    E.g. paired images: a plan whose ``fetch`` returns ``{"image": target_path, "source": input_path}``
    per example and ``image_columns=("image", "source")``; both are cached, batched and flipped/cropped
    together. ``plan`` may be a function making it when ``source_key`` identifies it without that."""
    from .dataset import CachedData

    path, seconds = ensure(plan, source_key, opts.image_size, opts.channels, opts.random_crop, opts.on_bad_image,
                           opts.worker_count(), opts.progress)
    data = CachedData(path)
    if opts.on_bad_image == "error" and data.meta.get("skipped"):  # built earlier, skipping them
        (name, reason), more = data.meta["bad"][0], data.meta["skipped"] - 1
        raise GmkitError(f"{name}: cannot read image ({reason})" + (f"; and {more} more" if more else ""))
    data.build_seconds = seconds
    data.random_flip, data.random_crop = opts.random_flip, opts.random_crop
    return data


def _kind(spec: str) -> tuple[str, object]:
    from .hf import is_saved_dataset, looks_like_hub_id
    from .shards import shard_files

    from ..names import use_bundled

    path = Path(spec)
    # A local folder named like a bundled set wins only if it holds images; a note says which was used.
    if use_bundled(spec, spec in bundled.NAMES, lambda p: p.is_dir() and bool(list_images(p)), "data set",
                   f"{spec}:train"):
        if spec not in bundled.available():
            bundled.load(spec, "train", None)  # raises the line that says what to install
        return "bundled", spec
    if is_saved_dataset(path):
        return "hf", spec
    tars = shard_files(spec)
    if tars:
        return "tar", tars
    if path.is_dir():
        return "folder", spec
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise GmkitError(f"{spec}: give a folder of images, not a single image")
    hub = spec.removeprefix("hf://datasets/").removeprefix("hf:")
    if looks_like_hub_id(hub):
        return "hf", hub
    raise GmkitError(f"{spec}: not a bundled data set ({', '.join(data_names())}), a folder of images, tar shards, "
                     "a saved Hugging Face dataset nor a Hub id (org/name)")


def _stream(kind: str, target, split: str, opts: DataOptions):
    from .cache import stored_size
    from .decode import UnusableImage, probe
    from .streams import StreamData

    if kind == "tar":
        from .shards import tar_stream

        source = tar_stream(target)
    elif kind == "hf":
        from .hf import hf_stream

        source = hf_stream(target, split, opts.config, opts.columns)
    else:
        raise OptionError("stream", "applies to Hugging Face datasets and tar shards; a folder or bundled set "
                                    "is decoded once into the cache instead")
    first = source.open_shard(0)
    probes: dict[str, list] = {c: [] for c in source.image_columns}
    for _, ex in zip(range(64), first):
        for c in source.image_columns:
            try:
                probes[c].append(probe(ex[c]))
            except (UnusableImage, KeyError):
                pass
    main = source.image_columns[0]
    if not probes[main]:
        raise GmkitError(f"{source.name}: no readable image among the first examples of the first shard")
    size = opts.image_size or min(probes[main][0][:2])
    chans = {c: (opts.channels if c == main and opts.channels else (1 if p and all(g for *_, g in p) else 3))
             for c, p in probes.items()}
    data = StreamData(source, size, chans, stored_size(size, opts.random_crop), opts.on_bad_image)
    data.random_flip, data.random_crop = opts.random_flip, opts.random_crop
    return data
