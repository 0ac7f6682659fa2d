"""The on-disk uint8 cache: every source is decoded once, in worker processes, into flat files.

Layout of ``$GMKIT_CACHE/data/images/<key>/``::

    meta.json      shapes, counts, class names, provenance (written last: its presence means complete)
    image.u8       N x C x S x S bytes, row-major; one such file per image column (``source.u8`` ...)
    label.npy      (N,) int64, when the source has labels
    captions.json  per example, its caption variants, when the source has captions

The key hashes the source's identity and content (a folder: every file's path, size and modification
time) with the decode options, so adding, changing or removing a file makes a new cache. One process
builds while the others wait on a file lock; the build writes into a temporary folder renamed into
place, so a crash or a second builder never leaves a half-written cache behind.

Rows are written with plain file writes and read with ``pread``: neither maps the file, so the
cache's size never shows up in a process's resident memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import GmkitError
from .bundled import cache_dir
from .decode import DecodeSpec, UnusableImage, decode_many, probe

FORMAT = 1  # bump when the layout or the decoding changes
CHUNK = 256  # examples per decode task
POOL_MIN = 1024  # below this, decoding in-process beats starting worker processes
MAX_REPORTED = 20  # bad images named one by one; the rest are counted


@dataclass
class Plan:
    """What a source resolved to before decoding: how to fetch each example's raw payloads."""
    name: str
    note: str
    key: str  # the source's identity and content (not the decode options)
    n: int
    fetch: Callable[[int, int], list[dict]]  # raw payloads of examples [start, stop): {column: raw}
    describe: Callable[[int], str]  # example i, as a message names it (a path, "ds row 17")
    image_columns: tuple[str, ...] = ("image",)
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    captions: list[list[str]] | Callable[[], list[list[str]]] | None = None  # a function: read on a cache miss only
    size: int | None = None  # native square size, when every example has it (bundled arrays)
    channels: int | None = None
    in_process: bool = False  # payloads are arrays: decoding is a copy, worker processes would only cost
    extra: dict = field(default_factory=dict)  # provenance worth keeping in meta.json


def images_root() -> Path:
    return cache_dir() / "data" / "images"


def cache_key(source_key: str, size: int | None, channels: int | None, crop: bool) -> str:
    ident = json.dumps([FORMAT, source_key, size, channels, crop])
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def stored_size(size: int, crop: bool) -> int:
    """Random crops are cut from images stored an eighth larger than the training size."""
    return size + size // 8 if crop else size


def ensure(plan: Plan | Callable[[], Plan], source_key: str | None, size: int | None, channels: int | None,
           crop: bool, on_bad: str, workers: int, progress: bool = True) -> tuple[Path, float | None]:
    """The cache folder for a source with these options, built if missing: (path, build seconds or None).

    ``plan`` may be a function making the plan when ``source_key`` is known without it (bundled data:
    a cache hit then never loads the arrays)."""
    from filelock import FileLock, Timeout

    key = cache_key(source_key or plan.key, size, channels, crop)
    path = images_root() / key
    if (path / "meta.json").is_file():
        return path, None
    if callable(plan) and not isinstance(plan, Plan):
        plan = plan()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            _say(f"gmkit: waiting for another process that is caching {plan.name} into {path}")
        lock.acquire()
    try:
        if (path / "meta.json").is_file():  # built while we waited
            return path, None
        for stale in path.parent.glob(f"{key}.tmp-*"):  # left by a crashed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        t = time.perf_counter()
        tmp = path.parent / f"{key}.tmp-{os.getpid()}"
        try:
            _build(plan, tmp, size, channels, crop, on_bad, workers, progress)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path, time.perf_counter() - t
    finally:
        lock.release()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _resolve_shape(plan: Plan, size: int | None, channels: int | None, on_bad: str) -> tuple[int, dict[str, int]]:
    """Auto size (the first image's shorter side) and, per image column, channels (grey when its first
    64 images are all grey). ``channels`` fixes the first column's; a paired column keeps its own."""
    first = plan.image_columns[0]
    fixed = {first: channels} if channels is not None else {}
    if plan.size is not None and plan.channels is not None:
        return size or plan.size, {c: fixed.get(c, plan.channels) for c in plan.image_columns}
    probes: dict[str, list] = {c: [] for c in plan.image_columns}
    for start in range(0, min(plan.n, 64), 16):
        for i, ex in enumerate(plan.fetch(start, min(start + 16, plan.n, 64)), start):
            for c in plan.image_columns:
                try:
                    probes[c].append(probe(ex[c]))
                except UnusableImage as e:
                    if on_bad == "error":
                        raise GmkitError(f"{plan.describe(i)}: cannot read image ({e})") from None
    if not probes[first]:
        raise GmkitError(f"{plan.name}: none of the first {min(plan.n, 64)} images can be read; give image_size and "
                         "check the files (on_bad_image=error names them)")
    size = size or min(probes[first][0][:2])
    return size, {c: fixed.get(c) or (1 if p and all(g for _, _, g in p) else 3) for c, p in probes.items()}


def _build(plan: Plan, tmp: Path, size, channels, crop, on_bad, workers, progress) -> None:
    if plan.n == 0:
        raise GmkitError(f"{plan.name}: no images")
    size, channels = _resolve_shape(plan, size, channels, on_bad)
    stored = stored_size(size, crop)
    specs = {c: DecodeSpec(channels[c], stored) for c in plan.image_columns}
    tmp.mkdir(parents=True)
    outs = {c: open(tmp / f"{c}.u8", "wb") for c in plan.image_columns}
    kept: list[np.ndarray] = []
    bad_total, bad_named, notes = 0, [], set()
    t0 = last = time.perf_counter()
    use_pool = workers > 0 and plan.n >= POOL_MIN and not plan.in_process
    pool = ProcessPoolExecutor(workers, _spawn()) if use_pool else None
    try:
        for start, results in _decoded_chunks(plan, specs, pool, workers):
            stop = min(start + CHUNK, plan.n)
            ok = np.ones(stop - start, bool)
            for col, (_, keep, bad, col_notes) in results.items():
                notes |= col_notes
                for i, reason in bad:
                    if ok[i]:
                        bad_total += 1
                        if len(bad_named) < 100:
                            bad_named.append([plan.describe(start + i), reason])
                        if on_bad == "error":
                            raise GmkitError(f"{plan.describe(start + i)}: cannot read image ({reason})")
                        if progress and bad_total <= MAX_REPORTED:
                            _say(f"gmkit: skipping unreadable image {plan.describe(start + i)} ({reason})")
                    ok[i] = False
            for col, (arr, keep, _, _) in results.items():
                rows = np.isin(np.asarray(keep, dtype=np.int64), np.flatnonzero(ok))
                outs[col].write(np.ascontiguousarray(arr[rows]).tobytes())
            kept.append(np.flatnonzero(ok) + start)
            now = time.perf_counter()
            if progress and now - last > 5:
                last = now
                _say(f"gmkit: caching {plan.name}: {stop}/{plan.n} images ({stop / (now - t0):.0f}/s)")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for f in outs.values():
            f.close()
    idx = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    if bad_total > MAX_REPORTED and progress:
        _say(f"gmkit: skipped {bad_total} unreadable images in all ({MAX_REPORTED} named above)")
    if len(idx) == 0:
        raise GmkitError(f"{plan.name}: none of the {plan.n} images could be read")
    if notes and progress:
        _say(f"gmkit: converted images of {plan.name}: {', '.join(sorted(notes))}")
    if plan.labels is not None:
        np.save(tmp / "label.npy", plan.labels[idx].astype(np.int64))
    captions = plan.captions() if callable(plan.captions) else plan.captions
    if captions is not None:
        (tmp / "captions.json").write_text(json.dumps([captions[i] for i in idx.tolist()]))
    meta = {"format": FORMAT, "name": plan.name, "note": plan.note, "n": int(len(idx)), "size": size,
            "channels": channels, "stored": stored, "crop": crop, "image_columns": list(plan.image_columns),
            "class_names": plan.class_names, "skipped": bad_total, "bad": bad_named, "conversions": sorted(notes),
            "source_examples": plan.n, **plan.extra}
    (tmp / "meta.json").write_text(json.dumps(meta))


def _spawn():
    import multiprocessing as mp

    # Not fork: the parent may hold torch's thread pools, which a forked child can deadlock on.
    return mp.get_context("spawn")


def _decoded_chunks(plan: Plan, specs: dict[str, DecodeSpec], pool, workers: int):
    """(start, {column: decode_many result}) per chunk, in order, at most 2 x workers chunks in flight."""
    starts = range(0, plan.n, CHUNK)

    def job(start):
        exs = plan.fetch(start, min(start + CHUNK, plan.n))
        return {c: [ex[c] for ex in exs] for c in plan.image_columns}

    if pool is None:
        for start in starts:
            yield start, {c: decode_many(raws, specs[c]) for c, raws in job(start).items()}
        return
    pending: list = []
    it = iter(starts)
    for start in it:
        pending.append((start, {c: pool.submit(decode_many, raws, specs[c]) for c, raws in job(start).items()}))
        if len(pending) >= 2 * workers:
            break
    while pending:
        start, futs = pending.pop(0)
        yield start, {c: f.result() for c, f in futs.items()}
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, {c: pool.submit(decode_many, raws, specs[c]) for c, raws in job(nxt).items()}))
