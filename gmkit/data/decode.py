"""One image, whatever it is (a path, encoded bytes, an array, a PIL image), to a uint8 (C, S, S) array.

Pure numpy and Pillow, no torch: this module runs inside the decode worker processes. Odd but
usable images are converted and counted (16-bit, CMYK, palette, transparency, animated, rotated by
EXIF); unusable ones raise ``BadImage`` with the reason, and the caller skips or stops.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

# Pillow's own limit stops at ~179M pixels with a warning from ~89M; a training image of more than
# 64M pixels (8k x 8k) is a decompression bomb or a mistake, and decoding it would cost gigabytes.
MAX_PIXELS = 64 * 1024 * 1024
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class BadImage(Exception):
    """An image that cannot be used: the message says why."""


@dataclass(frozen=True)
class DecodeSpec:
    channels: int  # 1 or 3
    size: int  # output side (square), after a centre crop of the shorter side


def _open(raw):
    from PIL import Image

    if isinstance(raw, Image.Image):
        return raw
    if isinstance(raw, dict):  # a Hugging Face Image() value read without decoding
        raw = raw.get("bytes") or raw.get("path")
        if raw is None:
            raise BadImage("empty image value")
    return Image.open(io.BytesIO(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else raw)


def _to_8bit(im, notes: set):
    """High bit-depth modes scaled to 8 bits (Pillow's convert("L") would clip them)."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "F":
        hi = float(np.nanmax(a)) if a.size else 1.0
        a = np.nan_to_num(a, nan=0.0) * (255.0 if hi <= 1.0 else 1.0)
    elif a.dtype != np.uint8:
        notes.add("16-bit")
        a = a.astype(np.float64) / (257.0 if a.max(initial=0) > 255 else 1.0)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")


def probe(raw) -> tuple[int, int, bool]:
    """(width, height, grey?) of an image without decoding all of it."""
    from PIL import UnidentifiedImageError

    try:
        with _open(raw) as im:
            grey = im.mode in _GREY_MODES
            if im.mode == "P":
                pal = np.asarray(im.convert("RGB"))
                grey = bool((pal[..., 0] == pal[..., 1]).all() and (pal[..., 1] == pal[..., 2]).all())
            return im.size[0], im.size[1], grey
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise BadImage(str(e) or type(e).__name__) from None


def decode(raw, spec: DecodeSpec, notes: set | None = None) -> np.ndarray:
    """``raw`` as a (C, S, S) uint8 array; ``notes`` collects the conversions made (for one summary line)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(raw, np.ndarray):
        if raw.shape == (spec.channels, spec.size, spec.size) and raw.dtype == np.uint8:
            return raw  # already what the cache stores (bundled arrays at their own size)
        raw = _array_image(raw)
    notes = set() if notes is None else notes
    opened = None
    try:
        im = opened = _open(raw)
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise BadImage(f"{w}x{h} pixels is over the limit of {MAX_PIXELS} (a decompression bomb?)")
        if getattr(im, "n_frames", 1) > 1:
            notes.add("animated (first frame)")
            im.seek(0)
        if im.format == "JPEG":
            im.draft("RGB" if spec.channels == 3 else "L", (spec.size, spec.size))  # DCT-domain downscale: fast
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode == "CMYK":
            notes.add("CMYK")
        if im.mode == "P":
            notes.add("palette")
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            im = _to_8bit(im, notes)
        if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            # Composite transparency onto white: emoji and icons are drawn for light backgrounds.
            im = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
        im = im.convert("L" if spec.channels == 1 else "RGB")
        im = ImageOps.fit(im, (spec.size, spec.size), Image.Resampling.LANCZOS)  # centre crop to square, resize
        arr = np.asarray(im, dtype=np.uint8)
    except BadImage:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    finally:
        if opened is not None and opened is not raw:
            opened.close()
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def _array_image(a: np.ndarray):
    """A uint8 array as (H, W), (H, W, C) or (C, H, W) -> a PIL image."""
    from PIL import Image

    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return Image.fromarray(np.ascontiguousarray(a))


def decode_many(raws: list, spec: DecodeSpec) -> tuple[np.ndarray, list[int], list[tuple[int, str]], set]:
    """Decode a list: (stacked arrays of the good ones, their positions, (position, reason) of bad ones, notes)."""
    good, keep, bad, notes = [], [], [], set()
    for i, raw in enumerate(raws):
        try:
            good.append(decode(raw, spec, notes))
            keep.append(i)
        except BadImage as e:
            bad.append((i, str(e)))
    arr = np.stack(good) if good else np.zeros((0, spec.channels, spec.size, spec.size), np.uint8)
    return arr, keep, bad, notes
