"""The one image decoder: whatever an image file or object is, an 8-bit "L" or "RGB" Pillow image, or a
``BadImage`` error naming it and saying why. Numpy and Pillow only (no torch), so data-loading worker
processes use it too; ``gmkit.imageio`` turns its images into tensors."""

from __future__ import annotations

import io
import sys

import numpy as np

from .errors import GmkitError

# Pillow's own limit stops at ~179M pixels with a warning from ~89M; an input of more than 64M pixels
# (8k x 8k) is a decompression bomb or a mistake, and decoding it would cost gigabytes.
MAX_PIXELS = 64 * 1024 * 1024
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class BadImage(GmkitError):
    """An image that cannot be used; the message names it and says why (``reason`` alone: why)."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"{name}: {reason}")


def read_image(source, notes: set | None = None, draft: tuple[str, tuple[int, int]] | None = None):
    """The one image decoder: a path, ``-`` (stdin), encoded bytes or a Pillow image -> a Pillow image in
    mode "L" (grey sources) or "RGB", 8 bits.

    16-bit and float images are scaled to 8 bits (not clipped), CMYK and palette images converted,
    transparency composited onto white, EXIF rotation applied, animations reduced to their first frame
    (``notes`` collects which of these happened, for one summary line). Over ``MAX_PIXELS`` (a
    decompression bomb), truncated or unreadable: ``BadImage``, checked before the pixels are decoded.
    ``draft`` = (mode, size) lets JPEG decode at a reduced size (a fast path for training data).
    """
    import warnings

    from PIL import Image

    notes = set() if notes is None else notes
    with warnings.catch_warnings():  # Pillow warns from 89M pixels at open; the limit below says it in one line
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _read_image(source, notes, draft)


def _read_image(source, notes: set, draft):
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    name = "stdin" if source == "-" else "the image" if isinstance(source, (Image.Image, bytes, bytearray)) else str(source)
    opened = None
    try:
        if isinstance(source, Image.Image):
            im = source
        elif source == "-":
            im = opened = Image.open(io.BytesIO(sys.stdin.buffer.read()))
        elif isinstance(source, (bytes, bytearray, memoryview)):
            im = opened = Image.open(io.BytesIO(source))
        else:
            im = opened = Image.open(source)
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise BadImage(name, f"{w}x{h} pixels is over the limit of {MAX_PIXELS:,} (a decompression bomb?)")
        if w == 0 or h == 0:
            raise BadImage(name, f"the image is empty ({w}x{h})")
        if getattr(im, "n_frames", 1) > 1:
            notes.add("animated (first frame)")
            im.seek(0)
        if draft is not None and im.format == "JPEG":
            im.draft(*draft)  # DCT-domain downscale: fast
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
            grey = im.mode in ("LA", "La")
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            im = im.convert("L" if grey else "RGB")
        return im.convert("L" if im.mode in _GREY_MODES else "RGB")
    except FileNotFoundError:
        raise BadImage(name, "no such image") from None
    except IsADirectoryError:
        raise BadImage(name, "is a folder, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(name, "over Pillow's pixel limit (a decompression bomb?)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage(name, f"cannot read image ({e or type(e).__name__})") from None
    finally:
        if opened is not None:
            opened.close()


def _to_8bit(im, notes: set):
    """High bit-depth modes scaled to 8 bits (Pillow's convert("L") would clip 16-bit values at 255)."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        a = a * (255.0 if a.size and a.max() <= 1.0 else 1.0)
    else:
        notes.add("16-bit")
        a = a.astype(np.float64) / (257.0 if a.max(initial=0) > 255 else 1.0)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
