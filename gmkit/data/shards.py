"""Webdataset-style tar shards: members grouped by key, one example per key.

    shard-000.tar:  0001.png 0001.cls 0001.txt  0002.jpg 0002.cls ...

``key.png`` (any image suffix) is the ``image`` column; ``key.NAME.png`` is an image column NAME
(paired data: ``key.source.png``); ``.cls``/``.label`` hold an integer class; ``.txt``/``.caption``
a caption (one variant per line); ``.json`` may hold ``label`` and ``text``. A ``classes.txt`` beside
the shards names the classes, one per line.

Shards are read in two ways: indexed (every member's offset, from the tar headers, so the cache
builder can read any example) or streamed (``streams.py``: shard by shard, front to back).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from ..errors import GmkitError
from .cache import Plan
from .folders import IMAGE_SUFFIXES
from .streams import StreamSource


def shard_files(spec: str) -> list[Path] | None:
    """The tar files a spec names (a .tar, a glob, or a folder of .tar files); None when it names none."""
    p = Path(spec)
    if p.is_file() and p.suffix == ".tar":
        return [p]
    if p.is_dir():
        tars = sorted(p.glob("*.tar"))
        loose = any(next(p.rglob("*" + s), None) is not None for s in (".png", ".jpg", ".jpeg"))
        return tars if tars and not loose else None
    if any(ch in spec for ch in "*?["):
        tars = sorted(Path(f) for f in glob.glob(spec) if f.endswith(".tar"))
        return tars or None
    return None


def _split_name(name: str) -> tuple[str, str]:
    """``dir/0001.source.png`` -> (``dir/0001``, ``source.png``): the key ends at the basename's first dot."""
    d, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _field(ext: str) -> str | None:
    """The column a member extension fills, or None to ignore it."""
    parts = ext.split(".")
    if "." + parts[-1] in IMAGE_SUFFIXES:
        return "image" if len(parts) == 1 else parts[0]
    if ext in ("cls", "cls.txt", "label"):
        return "label"
    if ext in ("txt", "caption", "text"):
        return "caption"
    if ext == "json":
        return "json"
    return None


def _finish_example(ex: dict) -> dict:
    """Payload bytes of the non-image fields -> label int and caption variants."""
    if "json" in ex:
        try:
            obj = json.loads(ex.pop("json"))
        except json.JSONDecodeError:
            obj = {}
        if isinstance(obj, dict):
            if "label" in obj and "label" not in ex:
                ex["label"] = str(obj["label"]).encode()
            text = obj.get("text", obj.get("caption"))
            if text is not None and "caption" not in ex:
                ex["caption"] = ("\n".join(text) if isinstance(text, list) else str(text)).encode()
    if "label" in ex:
        try:
            ex["label"] = int(ex["label"].decode().strip())
        except (ValueError, UnicodeDecodeError):
            ex["label"] = None
    if "caption" in ex:
        ex["caption"] = [t.strip() for t in ex["caption"].decode("utf-8", "replace").splitlines() if t.strip()]
    return ex


def _members(tf: tarfile.TarFile):
    """(member, example key, column) of every file member that fills a column."""
    for m in tf:
        if m.isfile():
            k, ext = _split_name(m.name)
            field = _field(ext)
            if field is not None:
                yield m, k, field


def iter_shard(path: Path) -> "iter":
    """Examples of one shard, front to back, without seeking (works on pipes and slow disks)."""
    key, ex = None, {}
    try:
        with tarfile.open(path, "r|*") as tf:
            for m, k, field in _members(tf):
                if k != key and ex:
                    yield _finish_example(ex)
                    ex = {}
                key = k
                ex["__key__"] = f"{path}:{k}"
                ex[field] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError) as e:
        raise GmkitError(f"{path}: cannot read the tar shard ({e})") from None
    if ex:
        yield _finish_example(ex)


def _class_names(files: list[Path]) -> list[str] | None:
    f = files[0].parent / "classes.txt"
    return [line.strip() for line in f.read_text().splitlines() if line.strip()] if f.is_file() else None


def tar_plan(files: list[Path]) -> Plan:
    """Index every shard (member offsets from the headers) so the cache builder can fetch any example."""
    index: list[tuple[int, dict[str, tuple[int, int]]]] = []
    labels, captions = [], []
    ident = hashlib.sha256()
    columns: dict[str, None] = {}
    for si, path in enumerate(files):
        st = path.stat()
        ident.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        groups: dict[str, dict] = {}
        try:
            with tarfile.open(path, "r:") as tf, open(path, "rb") as raw:
                for m, k, field in _members(tf):
                    g = groups.setdefault(k, {})
                    if field in ("label", "caption", "json"):
                        raw.seek(m.offset_data)
                        g[field] = raw.read(m.size)
                    else:
                        g[field] = (m.offset_data, m.size)
                        columns.setdefault(field, None)
        except (tarfile.TarError, OSError) as e:
            raise GmkitError(f"{path}: cannot read the tar shard ({e})") from None
        for k, g in groups.items():
            g = _finish_example(g)
            labels.append(g.pop("label", None))
            captions.append(g.pop("caption", None))
            index.append((si, {c: v for c, v in g.items() if isinstance(v, tuple)}))
    if not index:
        raise GmkitError(f"{files[0].parent}: the tar shards hold no examples")
    image_columns = ("image",) + tuple(c for c in columns if c != "image")
    has_labels = all(lab is not None for lab in labels)
    has_captions = all(c for c in captions)
    names = _class_names(files)
    label_arr = np.asarray(labels, np.int64) if has_labels else None
    if label_arr is not None and names is None:
        names = [str(i) for i in range(int(label_arr.max()) + 1)]
    paths = [str(f) for f in files]

    def fetch(start: int, stop: int) -> list[dict]:
        out, handles = [], {}
        try:
            for si, cols in index[start:stop]:
                f = handles.get(si) or handles.setdefault(si, open(paths[si], "rb"))
                out.append({c: os.pread(f.fileno(), size, off) for c, (off, size) in cols.items()})
        finally:
            for f in handles.values():
                f.close()
        return out

    def describe(i: int) -> str:
        return f"{paths[index[i][0]]} example {i}"

    return Plan(name=files[0].parent.name, note=f"tar shards in {files[0].parent}", key=ident.hexdigest(), n=len(index),
                fetch=fetch, describe=describe, image_columns=image_columns, labels=label_arr, class_names=names,
                captions=captions if has_captions else None, extra={"source": str(files[0].parent)})


class _TarShards:
    """Picklable shard opener for the stream."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __call__(self, i: int):
        return iter_shard(self.files[i])


def _describe(_: int, ex: dict) -> str:
    return str(ex.get("__key__", "an example"))


def tar_stream(files: list[Path]) -> StreamSource:
    first = next(iter_shard(files[0]), None)
    if first is None:
        raise GmkitError(f"{files[0]}: the tar shard holds no examples")
    cols = ("image",) + tuple(k for k in first if k not in ("image", "label", "caption", "__key__"))
    return StreamSource(files[0].parent.name, f"tar shards in {files[0].parent} (streamed)", len(files),
                        _TarShards(files), _describe, cols, _class_names(files))
