"""One image, whatever it is (a path, encoded bytes, an array, a PIL image), to a uint8 (C, S, S) array.

Pure numpy and Pillow, no torch: this module runs inside the decode worker processes. Odd but
usable images are converted and counted (16-bit, CMYK, palette, transparency, animated, rotated by
EXIF); unusable ones raise ``UnusableImage`` with the reason, and the caller skips or stops.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .. import image_read


class UnusableImage(Exception):
    """An image the data pipeline cannot use: the message says only why; the caller names the image
    (its row or member) and skips or stops. Not ``image_read.BadImage``, the user-facing error."""


@dataclass(frozen=True)
class DecodeSpec:
    channels: int  # 1 or 3
    size: int  # output side (square), after a centre crop of the shorter side


def _source(raw):
    """What ``image_read`` opens: a Hugging Face Image() value read without decoding gives its bytes or path."""
    if isinstance(raw, dict):
        raw = raw.get("bytes") or raw.get("path")
        if raw is None:
            raise UnusableImage("empty image value")
    return bytes(raw) if isinstance(raw, memoryview) else raw


def probe(raw) -> tuple[int, int, bool]:
    """(width, height, grey?) of an image without decoding all of it."""
    from PIL import Image, UnidentifiedImageError

    src = _source(raw)
    try:
        with (src if isinstance(src, Image.Image) else Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)) as im:
            grey = im.mode in image_read._GREY_MODES
            if im.mode == "P":
                pal = np.asarray(im.convert("RGB"))
                grey = bool((pal[..., 0] == pal[..., 1]).all() and (pal[..., 1] == pal[..., 2]).all())
            return im.size[0], im.size[1], grey
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UnusableImage(str(e) or type(e).__name__) from None


def decode(raw, spec: DecodeSpec, notes: set | None = None) -> np.ndarray:
    """``raw`` as a (C, S, S) uint8 array through the one image decoder (``gmkit.image_read``), then a
    centre crop to square and a resize; ``notes`` collects the conversions made (for one summary line)."""
    from PIL import Image, ImageOps

    if isinstance(raw, np.ndarray):
        if raw.shape == (spec.channels, spec.size, spec.size) and raw.dtype == np.uint8:
            return raw  # already what the cache stores (bundled arrays at their own size)
        raw = _array_image(raw)
    mode = "RGB" if spec.channels == 3 else "L"
    try:
        im = image_read.read_image(_source(raw), notes, draft=(mode, (spec.size, spec.size)))
    except image_read.BadImage as e:
        raise UnusableImage(e.reason) from None
    im = ImageOps.fit(im.convert(mode), (spec.size, spec.size), Image.Resampling.LANCZOS)  # centre crop, resize
    arr = np.asarray(im, dtype=np.uint8)
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
        except UnusableImage as e:
            bad.append((i, str(e)))
    arr = np.stack(good) if good else np.zeros((0, spec.channels, spec.size, spec.size), np.uint8)
    return arr, keep, bad, notes
