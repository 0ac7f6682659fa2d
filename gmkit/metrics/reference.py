"""Reference statistics: what samples are measured against, from any data source or a saved file.

A reference is the held-out split of a data source (anything ``--data`` takes: a bundled name, a
folder, a Hugging Face dataset; the training split is what ``gmkit train`` learns from) seen through
one extractor: its features (for KID, precision/recall, density/coverage), their mean and
covariance (for the Frechet distance), and features of training-split images (the pool the
real-vs-real baseline draws from, at the samples' count).

The same content is a statistics file (``gmkit metrics REF --save-stats ref.safetensors``) and the
cache entry gmkit keeps per (extractor, images) content hash; bundled data ship theirs where gmkit
ships the extractor (mnist).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import GmkitError
from .distances import gaussian_stats

KIND = "reference-stats"
FORMAT = "1"
MAX_DIM = 65536


@dataclass
class Reference:
    source: str
    description: str
    extractor: str  # the extractor's printed name
    extractor_spec: str  # what rebuilds it (--extractor)
    extractor_id: str
    channels: int
    size: tuple[int, int]
    features: np.ndarray  # (N, D) float32, held-out split
    mean: np.ndarray  # (D,) float64
    cov: np.ndarray  # (D, D) float64
    pool: np.ndarray  # (M, D) float32, training-split images for the baseline
    train_images: int  # size of the training split the pool is drawn from
    key: str = ""
    notes: list[str] = field(default_factory=list)

    def baseline(self, n: int) -> np.ndarray:
        """``n`` real training-split features (fewer if the pool is smaller), the same draw every time."""
        m = len(self.pool)
        return self.pool[np.random.default_rng(0).choice(m, size=min(n, m), replace=False)]


# -- statistics files ---------------------------------------------------------------------------------

def write_stats(ref: Reference, path: str | Path, command: str | None = None) -> None:
    """``command``: how the file was made, kept in its metadata."""
    from ..checkpoint import save_tensors

    meta = {"gmkit.kind": KIND, "gmkit.format": FORMAT, "gmkit.source": ref.source, "gmkit.description": ref.description,
            "gmkit.extractor": ref.extractor, "gmkit.extractor_spec": ref.extractor_spec,
            "gmkit.extractor_id": ref.extractor_id, "gmkit.channels": str(ref.channels),
            "gmkit.size": f"{ref.size[0]}x{ref.size[1]}", "gmkit.train_images": str(ref.train_images), "gmkit.key": ref.key}
    if command:
        meta["gmkit.command"] = command
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_tensors(Path(path), {"features": torch.from_numpy(np.ascontiguousarray(ref.features, np.float32)),
                              "mean": torch.from_numpy(ref.mean), "cov": torch.from_numpy(ref.cov),
                              "pool": torch.from_numpy(np.ascontiguousarray(ref.pool, np.float32))}, meta)


def _stats_meta(path: Path) -> dict | None:
    from ..checkpoint import read_metadata

    try:
        meta = read_metadata(path)
    except (GmkitError, OSError, ValueError):
        return None
    return meta if meta.get("gmkit.kind") == KIND else None


def stats_file_extractor(spec: str) -> str | None:
    """The extractor a statistics file was made with, or None if ``spec`` is not one."""
    p = Path(spec)
    if p.suffix.lower() == ".safetensors" and p.is_file():
        meta = _stats_meta(p)
        return meta.get("gmkit.extractor_spec") if meta else None
    return None


def read_stats(path: str | Path) -> Reference:
    """A statistics file, checked: kind, shapes, dtypes and finiteness, before anything uses it."""
    from ..checkpoint import load_tensors, read_header

    path = Path(path)
    meta = _stats_meta(path)
    if meta is None:
        raise GmkitError(f"{path}: not a gmkit statistics file (write one with `gmkit metrics REF --save-stats {path.name}`)")
    header = read_header(path)
    shapes = {k: v.get("shape") for k, v in header.items() if k != "__metadata__"}
    want = {"features": 2, "mean": 1, "cov": 2, "pool": 2}
    if set(shapes) != set(want) or any(len(shapes[k]) != r for k, r in want.items()):
        raise GmkitError(f"{path}: a statistics file needs features (N, D), mean (D), cov (D, D) and pool (M, D)")
    d = shapes["mean"][0]
    if not 0 < d <= MAX_DIM or shapes["cov"] != [d, d] or shapes["features"][1] != d or shapes["pool"][1] != d:
        raise GmkitError(f"{path}: its tensors disagree in feature dimension ({shapes})")
    if shapes["features"][0] < 2:
        raise GmkitError(f"{path}: holds {shapes['features'][0]} reference features; metrics need more")
    tensors, _ = load_tensors(path)
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise GmkitError(f"{path}: holds NaN or infinite values")
    try:
        h, w = (int(v) for v in meta.get("gmkit.size", "0x0").split("x"))
        channels, train = int(meta.get("gmkit.channels", "0")), int(meta.get("gmkit.train_images", "0"))
    except ValueError:
        raise GmkitError(f"{path}: malformed metadata (gmkit.size, gmkit.channels)") from None
    return Reference(meta.get("gmkit.source", str(path)), meta.get("gmkit.description", str(path)),
                     meta.get("gmkit.extractor", "?"), meta.get("gmkit.extractor_spec", "?"),
                     meta.get("gmkit.extractor_id", ""), channels, (h, w), tensors["features"].numpy(),
                     tensors["mean"].double().numpy(), tensors["cov"].double().numpy(), tensors["pool"].numpy(), train,
                     meta.get("gmkit.key", ""))


# -- from a data source -------------------------------------------------------------------------------

def all_images(data) -> torch.Tensor:
    """Every image of a loaded data set as floats: an attribute of the in-memory data layer, a method of
    the one that streams from its cache (which refuses sets too large to hold)."""
    return data.images() if callable(data.images) else data.images


class _Split:
    """One split of a data source, read in batches: the one place metrics reads data (through the data
    layer's public ``load_data``), so a reference never has to fit in memory as floats."""

    def __init__(self, spec: str, split: str):
        from ..data import load_data

        try:
            self.data = load_data(spec, split)
        except GmkitError as e:
            msg = str(e)
            raise GmkitError("reference " + msg[len("--data "):] if msg.startswith("--data ") else f"reference {spec}: {msg}") from None
        self.count = len(self.data)

    def batches(self, size: int = 256):
        """(N, C, H, W) float batches in [-1, 1], in order."""
        if callable(getattr(self.data, "batches", None)):  # a data layer that streams from its cache
            column = self.data.image_columns[0]
            return (b[column] for b in self.data.batches(size))
        return iter(self.data.images.split(size))

    def scan(self, extractor=None, keep: np.ndarray | None = None, digest=None):
        """One pass: features of the rows in ``keep`` (all with None), the image shape, and ``digest`` fed."""
        feats, shape, start = [], None, 0
        for b in self.batches():
            shape = tuple(b.shape[1:])
            if digest is not None:
                digest.update(b.float().contiguous().numpy().tobytes())
            rows = b if keep is None else b[torch.from_numpy(keep[(keep >= start) & (keep < start + len(b))] - start)]
            if extractor is not None and len(rows):
                feats.append(extractor.features(rows).numpy())
            start += len(b)
        return (np.concatenate(feats) if feats else None), shape


def _cached(key: str) -> Path:
    from ..data.core import cache_dir

    return cache_dir() / "metrics" / f"reference-{key[:24]}.safetensors"


def _shipped(key: str) -> Path | None:
    folder = Path(str(resources.files("gmkit") / "weights"))
    for p in sorted(folder.glob("reference-*.safetensors")):
        meta = _stats_meta(p)
        if meta and meta.get("gmkit.key") == key:
            return p
    return None


def from_source(spec: str, extractor, n: int | None = None, pool_size: int | None = None) -> Reference:
    """The reference of a data source through ``extractor``: cached by content; the pool grows to ``n``."""
    held, train = _Split(spec, "test"), _Split(spec, "train")
    if held.count < 2:
        raise GmkitError(f"reference {spec}: its held-out split has {held.count} image(s) (every 10th image is held "
                         "out); metrics need more: give a larger reference")
    h = hashlib.sha256(f"gmkit-reference-v{FORMAT}:{extractor.identity}:{held.count}:{train.count}:".encode())
    held.scan(digest=h)
    train.scan(digest=h)
    key = h.hexdigest()
    want_pool = min(train.count, pool_size if pool_size is not None else (n or 0))
    for path in (_shipped(key), _cached(key)):
        if path is not None and path.is_file():
            ref = read_stats(path)
            if ref.key == key and len(ref.pool) >= want_pool:
                ref.source = spec
                return ref
    feats, shape = held.scan(extractor)
    # The pool is a fixed random subset of the training split (all of it when small), in split order.
    idx = np.sort(np.random.default_rng(0).permutation(train.count)[:want_pool])
    pool = train.scan(extractor, keep=idx)[0] if want_pool else None
    pool = pool if pool is not None else np.zeros((0, feats.shape[1]), np.float32)
    mean, cov = gaussian_stats(feats)
    ref = Reference(spec, f"{spec} held-out split ({held.count} images)", extractor.name, extractor.spec,
                    extractor.identity, int(shape[0]), (int(shape[1]), int(shape[2])), feats, mean,
                    np.atleast_2d(cov), pool, train.count, key)
    write_stats(ref, _cached(key))
    return ref


def load_reference(spec: str, extractor, n: int | None = None, pool_size: int | None = None) -> Reference:
    """A statistics file (its extractor must be this one) or a data source."""
    if stats_file_extractor(spec) is not None or (Path(spec).suffix.lower() == ".safetensors" and Path(spec).is_file()):
        ref = read_stats(spec)
        if ref.extractor_id != extractor.identity:
            raise GmkitError(f"{spec}: holds features of the {ref.extractor} extractor ({ref.extractor_spec}), "
                             f"not of {extractor.name}: give --extractor {ref.extractor_spec}, or rebuild the file")
        return ref
    return from_source(spec, extractor, n, pool_size)
