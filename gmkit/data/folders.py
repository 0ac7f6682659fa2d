"""Folders of image files: class subfolders, Hugging Face split folders, ``metadata.jsonl`` captions.

Layouts understood (the Hugging Face imagefolder convention):

    photos/*.png                         no labels
    photos/cat/*.png photos/dog/*.png    classes cat, dog
    photos/train/... photos/test/...     splits (train/training, validation/valid/val/dev,
                                         test/testing/eval), each laid out as above; never classes
    .../metadata.jsonl                   captions: {"file_name": "a.png", "text": "..."} per line

A folder without split folders trains on every image; its ``test`` split is every 10th image of
each class (for quick checks: those images are also in ``train``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import GmkitError
from ..outputs import IMAGE_SUFFIXES
from .bundled import held_out_mask
from .cache import Plan

SPLIT_DIRS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
              "test": ("test", "testing", "eval", "evaluation")}
SPLIT_OF = {alias: split for split, aliases in SPLIT_DIRS.items() for alias in aliases}


def walk(root: Path) -> list[tuple[str, int, int]]:
    """(path relative to root, size, mtime_ns) of every image file below ``root``, sorted by path."""
    found = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(root / rel if rel else root))
        except OSError as e:
            raise GmkitError(f"{root / rel}: cannot list ({e.strerror})") from None
        for e in entries:
            name = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir():
                stack.append(name)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                st = e.stat()
                found.append((name, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def list_images(root: Path) -> list[Path]:
    """Image files below ``root``, recursively, in a stable order."""
    return [root / rel for rel, _, _ in walk(root)]


def split_folders(root: Path) -> dict[str, str]:
    """{split: folder name} of the split folders directly under ``root``."""
    found: dict[str, str] = {}
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        split = SPLIT_OF.get(e.name.lower())
        if split and e.is_dir() and split not in found:
            found[split] = e.name
    return found


def folder_plan(root: Path, split: str) -> Plan:
    splits = split_folders(root)
    base, held_out = root, False
    if splits:
        want = SPLIT_OF.get(split, split)
        if want == "all":
            raise GmkitError(f"{root}: has split folders ({', '.join(splits)}); pick one of them as the split")
        if want not in splits:
            raise GmkitError(f"{root}: no split {split!r} (its split folders: {', '.join(splits.values())})")
        base = root / splits[want]
    elif split not in ("train", "all"):
        if SPLIT_OF.get(split, split) not in ("test", "validation"):
            raise GmkitError(f"{root}: no split {split!r} (train, test, all)")
        held_out = True
    files = walk(base)
    if not files:
        where = f"{base}" + (f" (split {split})" if splits else "")
        raise GmkitError(f"{where}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    rels = [f[0] for f in files]
    # Subfolders name classes (the ImageFolder convention); images at the top level have none.
    tops = {r.split("/", 1)[0] if "/" in r else "" for r in rels}
    classed = "" not in tops and len(tops) > 1
    class_names = sorted(tops) if classed else None
    labels = None
    if classed:
        where = {c: i for i, c in enumerate(class_names)}
        labels = np.fromiter((where[r.split("/", 1)[0]] for r in rels), np.int64, len(rels))
    meta = _metadata_file(base, root)
    ident = hashlib.sha256()
    ident.update(json.dumps([str(base.resolve()), split if held_out else "", _stat(meta)]).encode())
    for f in files:
        ident.update(f"{f[0]}\0{f[1]}\0{f[2]}\n".encode())
    if held_out:
        keep = np.flatnonzero(held_out_mask(labels if labels is not None else np.zeros(len(rels), np.int64)))
        rels = [rels[i] for i in keep]
        labels = labels[keep] if labels is not None else None
    prefix = str(base)

    def captions() -> list[list[str]]:  # read when the cache is built, not on every cache hit
        return read_captions(meta.parent, [base / r for r in rels])

    def fetch(start: int, stop: int) -> list[dict]:
        return [{"image": os.path.join(prefix, r)} for r in rels[start:stop]]

    return Plan(name=root.name, note=f"images from {root}", key=ident.hexdigest(), n=len(rels), fetch=fetch,
                describe=lambda i: os.path.join(prefix, rels[i]), labels=labels, class_names=class_names,
                captions=captions if meta else None, extra={"source": str(root)})


def _metadata_file(base: Path, root: Path) -> Path | None:
    for folder in (base, root):
        if (folder / "metadata.jsonl").is_file():
            return folder / "metadata.jsonl"
    return None


def _stat(path: Path | None) -> list:
    if path is None:
        return []
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def metadata_rows(meta: Path, keys: tuple[str, ...], expected: str):
    """(line number, the values of ``keys``) for each non-blank line of a ``metadata.jsonl``; a line
    that is not a JSON object with those keys stops with one error saying it ``expected`` them."""
    with open(meta, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                values = tuple(row[k] for k in keys)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise GmkitError(f"{meta}:{i}: expected a JSON object with {expected}") from None
            yield i, values


def read_captions(root: Path, files: list[Path]) -> list[list[str]]:
    """Captions for ``files`` from ``root/metadata.jsonl`` (``file_name`` and ``text`` per line).

    A caption may be a string or a list of strings (variants). Every image needs one.
    """
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise GmkitError(f"{root}: no metadata.jsonl with captions (one JSON line per image: "
                         '{"file_name": "a.png", "text": "a caption"})')
    captions: dict[str, list[str]] = {}
    for i, (name, text) in metadata_rows(meta, ("file_name", "text"), "file_name and text"):
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise GmkitError(f"{meta}:{i}: empty caption for {name}")
        captions[os.path.normpath(name)] = texts
    out = []
    for p in files:
        rel = os.path.relpath(p, root)
        if rel not in captions:
            raise GmkitError(f"{p}: no caption in {meta} (add a line with \"file_name\": \"{rel}\")")
        out.append(captions[rel])
    return out
