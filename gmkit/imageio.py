"""Images in and out: grids, folders of PNGs, raw tensors, and stdin/stdout for pipes.

Reading goes through one decoder, ``image_read.read_image`` (16-bit, CMYK, palette, animated,
decompression bombs); ``distance_note`` says when an input is far from a model's training data.
``--out`` picks the format by its form: ``x.png`` one grid, ``dir/`` (or an existing folder) one
PNG per image (0000.png ...), ``x.safetensors`` the raw tensor in [-1, 1], ``-`` a PNG grid on stdout.
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import GmkitError

if TYPE_CHECKING:  # torch is imported where used: the decoder runs in torch-free worker processes too
    import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    import torch

    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile a batch into one image (H, W, C) uint8, ``nrow`` images per row (default: square-ish)."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = imgs[i]
    return grid


def to_pil(arr: np.ndarray):
    """One (H, W, C) uint8 image as Pillow writes it: greyscale ("L") for one channel, else RGB."""
    from PIL import Image

    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    to_pil(arr).save(buf, format="PNG")
    return buf.getvalue()


def output_kind(out: str) -> str:
    if out == "-":
        return "stdout"
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return "folder"
    suffix = Path(out).suffix.lower()
    if suffix == ".safetensors":
        return "tensor"
    if suffix in (".png", ".jpg", ".jpeg", ".webp"):
        return "grid"
    raise GmkitError(f"--out {out}: unknown format (use .png for a grid, a folder/ for one PNG each, "
                     ".safetensors for the raw tensor, or - for stdout)")


# What one call may hold in memory before writing: a grid is one image, a tensor file one tensor; a
# folder/ is written batch by batch and has no such bound.
MAX_GRID_IMAGES = 4096
MAX_TENSOR_BYTES = 2 << 30


def check_held(out: str, n: int, image_shape) -> None:
    """Refuse outputs that would hold more than a grid or a tensor file sensibly can (say which fits)."""
    from .errors import OptionError

    kind = output_kind(out)
    if kind in ("grid", "stdout") and n > MAX_GRID_IMAGES:
        raise OptionError("n", f"{n:,} images in one grid: at most {MAX_GRID_IMAGES:,}; write a folder/ "
                               "(one PNG each, written batch by batch)")
    size = 4 * n * math.prod(image_shape)
    if kind == "tensor" and size > MAX_TENSOR_BYTES:
        raise OptionError("n", f"{n:,} images make a {size / 2**30:.1f} GiB tensor file: at most "
                               f"{MAX_TENSOR_BYTES / 2**30:.0f} GiB; write a folder/ (written batch by batch)")


def write_image(arr: np.ndarray, path) -> None:
    """One (H, W, C) uint8 image to a file, atomically (a failed write never leaves half a PNG)."""
    from .checkpoint import atomic_write

    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    atomic_write(path, lambda tmp: to_pil(arr).save(tmp, format=fmt))


def save_images(x: torch.Tensor, out: str, metadata: dict[str, str] | None = None, start_index: int = 0) -> list[str]:
    """Write images in [-1, 1]; returns the paths written. Every file is written atomically; a folder gets
    files ``start_index`` onwards, so a long run can write each batch as it is done."""
    kind = output_kind(out)
    if kind in ("stdout", "grid") and x.shape[0] == 1:  # one image is written as itself, no grid border
        arr = to_uint8(x)[0]
        if kind == "grid":
            write_image(arr, out)
            return [out]
        sys.stdout.buffer.write(png_bytes(arr))
        sys.stdout.buffer.flush()
        return ["-"]
    if kind == "stdout":
        sys.stdout.buffer.write(png_bytes(make_grid(x)))
        sys.stdout.buffer.flush()
        return ["-"]
    if kind == "tensor":
        from .checkpoint import save_tensors

        save_tensors(Path(out), {"images": x.float().cpu()}, {"gmkit.kind": "images", **(metadata or {})})
        return [out]
    if kind == "grid":
        write_image(make_grid(x), out)
        return [out]
    folder = Path(out)
    paths = []
    for i, arr in enumerate(to_uint8(x)):
        p = folder / f"{start_index + i:04d}.png"
        write_image(arr, p)
        paths.append(str(p))
    return paths


# -- reading images -------------------------------------------------------------------------------

from .image_read import BadImage, read_image  # noqa: E402,F401 (the one image decoder; re-exported)


def load_image_file(path: str, channels: int, size: int) -> torch.Tensor:
    """One image file (or ``-`` for stdin) as (1, C, size, size) in [-1, 1]."""
    im = read_image(path)
    if im.size != (size, size):
        print(f"gmkit: {path}: resized to {size}x{size} for this model", file=sys.stderr)
    return pil_tensor(im, channels, size)


def pil_tensor(im, channels: int, size: int) -> torch.Tensor:
    """A Pillow image centre-cropped and resized to (1, C, size, size) in [-1, 1]."""
    import torch

    from PIL import Image, ImageOps

    im = ImageOps.fit(read_image(im).convert("L" if channels == 1 else "RGB"), (size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())[None] / 127.5 - 1


class ImageSet:
    """A folder of images, or a .safetensors holding an images tensor, read in batches as (N, C, H, W) in
    [-1, 1] at the images' own size and colour (grey only if every image is grey); mixed sizes are
    centre-cropped and resized to the most common one, and said so in ``notes``. Only the headers are
    read up front, so 50,000 samples never sit in memory as floats."""

    def __init__(self, path: str):
        from collections import Counter

        from PIL import Image, UnidentifiedImageError

        from .data.core import list_images

        self.path, self.notes, self.tensor, self.files = path, [], None, []
        p = Path(path)
        if p.is_file() and p.suffix == ".safetensors":
            from .checkpoint import load_tensors

            tensors, _ = load_tensors(p)
            x = tensors.get("images", next(iter(tensors.values())) if len(tensors) == 1 else None)
            if x is None or x.ndim != 4:
                raise GmkitError(f"{path}: expected an 'images' tensor of shape (N, C, H, W)")
            self.tensor = x.float()
            self.count, self.shape = len(x), tuple(x.shape[1:])
            return
        if not p.is_dir():
            raise GmkitError(f"{path}: not a folder of images nor a .safetensors file")
        self.files = list_images(p)
        if not self.files:
            raise GmkitError(f"{path}: no images in this folder")
        sizes, grey = Counter(), True
        try:
            for f in self.files:
                with Image.open(f) as im:
                    sizes[im.size] += 1
                    grey = grey and im.mode in ("1", "L", "LA", "I", "I;16", "F")
        except (OSError, UnidentifiedImageError) as e:
            raise GmkitError(f"{f}: cannot read image ({e})") from None
        (w, h), _ = sizes.most_common(1)[0]
        if len(sizes) > 1:
            self.notes.append(f"images of {len(sizes)} different sizes: each centre-cropped and resized to {w}x{h}")
        self.count, self.shape = len(self.files), (1 if grey else 3, h, w)

    @classmethod
    def from_tensor(cls, x: torch.Tensor, label: str = "images") -> "ImageSet":
        self = cls.__new__(cls)
        self.path, self.notes, self.tensor, self.files = label, [], x, []
        self.count, self.shape = len(x), tuple(x.shape[1:])
        return self

    def batches(self, size: int = 256):
        import torch

        if self.tensor is not None:
            yield from self.tensor.split(size)
            return
        from PIL import Image, ImageOps

        c, h, w = self.shape
        for i in range(0, self.count, size):
            arrays = []
            for f in self.files[i:i + size]:
                im = read_image(str(f)).convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = ImageOps.fit(im, (w, h), Image.Resampling.LANCZOS)
                a = np.asarray(im, dtype=np.uint8)
                arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            yield torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1

    def all(self) -> torch.Tensor:
        import torch

        return self.tensor if self.tensor is not None else torch.cat(list(self.batches()))


def load_image_set(path: str) -> tuple[torch.Tensor, list[str]]:
    """An ``ImageSet`` read whole, and its notes."""
    images = ImageSet(path)
    return images.all(), images.notes


# Pixel mean and standard deviation (in [0, 1]) of the bundled training sets, measured on their training
# splits, for checkpoints whose recipe predates ``data_stats``: what an input is compared with.
DATA_STATS = {"mnist": (0.131, 0.308), "mnist-captions": (0.131, 0.308), "openmoji": (0.788, 0.325),
              "digits": (0.305, 0.376)}
# An input image reads as far from the model's data past these: a mean this far off, a spread off by this factor.
FAR_MEAN, FAR_STD = 0.25, 2.0
# Largest image a model may be asked to make from an input (size-agnostic models, e.g. 4x upsampling).
MAX_OUTPUT_PIXELS = 4096 * 4096


def data_stats(meta: dict) -> tuple[float, float] | None:
    """(mean, std) of a checkpoint's training pixels in [0, 1], from its recipe, if known."""
    import json

    try:
        recipe = json.loads((meta or {}).get("gmkit.recipe", "{}") or "{}")
    except ValueError:
        return None
    stats = recipe.get("data_stats") if isinstance(recipe, dict) else None
    if isinstance(stats, list) and len(stats) == 2 and all(isinstance(v, (int, float)) for v in stats):
        return float(stats[0]), float(stats[1])
    return DATA_STATS.get(recipe.get("data")) if isinstance(recipe, dict) else None


def distance_note(name: str, im, channels: int, size: tuple[int, int], stats: tuple[float, float] | None) -> str | None:
    """A note when an input image is far from what the model was trained on: colour into a grey model,
    a large change of scale, or pixel statistics far from the training data's."""
    reasons = []
    if channels == 1 and im.mode != "L" and not _looks_grey(im):
        reasons.append("a colour image for a greyscale model")
    scale = max(im.width / size[1], im.height / size[0], size[1] / im.width, size[0] / im.height)
    if scale >= 4:
        reasons.append(f"{im.width}x{im.height} pixels for a {size[1]}x{size[0]} model")
    if stats is not None:
        a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255
        mean, std = float(a.mean()), float(a.std())
        if abs(mean - stats[0]) > FAR_MEAN or not stats[1] / FAR_STD <= std <= stats[1] * FAR_STD:
            reasons.append(f"pixel mean {mean:.2f} and spread {std:.2f} where its training images have "
                           f"{stats[0]:.2f} and {stats[1]:.2f}")
    if not reasons:
        return None
    return f"{name} is far from what this model was trained on ({'; '.join(reasons)}): expect a poor result"


def _looks_grey(im) -> bool:
    a = np.asarray(im.convert("RGB")).astype(np.int16)
    return bool(np.abs(a[..., 0] - a[..., 1]).max(initial=0) <= 2 and np.abs(a[..., 1] - a[..., 2]).max(initial=0) <= 2)


def load_input_image(path, channels: int, size_for, quiet: bool = False,
                     stats: tuple[float, float] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """An ``--image`` for a model, as (1, C, h, w) in [-1, 1], and its original (width, height).

    ``path`` is a file, ``-`` (stdin) or a Pillow image. ``size_for(height, width) -> (h, w)`` is the
    size the model takes (``Family.input_size``); any other size is resized (centre-cropped if the
    aspect differs) and said so, as is a colour change and an image far from the model's training
    data (``stats``: its pixel mean and spread, ``data_stats``).
    """
    import torch

    from PIL import Image, ImageOps

    im = read_image(path)
    name = "the image" if isinstance(path, Image.Image) else path
    original = im.size
    h, w = size_for(im.height, im.width)
    if h * w > MAX_OUTPUT_PIXELS:
        raise GmkitError(f"{name}: a {im.width}x{im.height} input would make a {w}x{h} image, over the limit of "
                         f"{MAX_OUTPUT_PIXELS:,} pixels; resize the input first")
    if im.size != (w, h):
        crop = abs(im.width / im.height - w / h) > 0.01
        _note(f"{name}: {im.width}x{im.height} image {'centre-cropped and ' if crop else ''}resized to {w}x{h} for this model", quiet)
    if channels == 1 and im.mode != "L" and not _looks_grey(im):
        _note(f"{name}: colour image converted to greyscale for this model", quiet)
    far = distance_note(name, im, channels, (h, w), stats)
    if far:
        _note(far, quiet)
    im = ImageOps.fit(im.convert("L" if channels == 1 else "RGB"), (w, h), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())[None] / 127.5 - 1, original


def load_mask(path, image_size: tuple[int, int], size: tuple[int, int], quiet: bool = False) -> torch.Tensor:
    """An inpainting mask as (1, 1, h, w) of 0/1, 1 = generate: white (grey >= 50%) is filled, black kept.

    A mask of another size than the image (``image_size``, width x height as read) is resized to
    it first, then cropped and resized as the image was, to ``size`` (h, w); all said on stderr.
    """
    import torch

    from PIL import Image, ImageOps

    im = read_image(path).convert("L")
    arr = np.asarray(im)
    grey = float(((arr > 0) & (arr < 255)).mean())
    if grey > 0.01:
        _note(f"{path}: grey mask levels thresholded at 50% ({100 * grey:.0f}% of pixels were grey)", quiet)
    if im.size != tuple(image_size):
        _note(f"{path}: {im.width}x{im.height} mask resized to the image's {image_size[0]}x{image_size[1]}", quiet)
        im = im.resize(tuple(image_size), Image.Resampling.BILINEAR)
    im = ImageOps.fit(im, (size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im)
    m = torch.from_numpy((arr >= 128).astype(np.float32))[None, None]
    if bool((m == 1).all()):
        _note(f"{path}: the mask is all white: every pixel is generated and the image is not used "
              "(paint the parts to keep black)", quiet)
    elif bool((m == 0).all()):
        _note(f"{path}: the mask is all black: nothing to fill, the output is the input image "
              "(paint the parts to generate white)", quiet)
    return m


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"gmkit: {message}", file=sys.stderr)
