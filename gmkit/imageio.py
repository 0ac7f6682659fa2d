"""Images in and out: grids, folders of PNGs, raw tensors, and stdin/stdout for pipes.

``--out`` picks the format by its form: ``x.png`` one grid, ``dir/`` (or an existing folder) one
PNG per image (0000.png ...), ``x.safetensors`` the raw tensor in [-1, 1], ``-`` a PNG grid on stdout.
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import GmkitError


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
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


def check_writable(out: str) -> None:
    """Fail before any work if the output cannot be written."""
    if out == "-":
        return
    p = Path(out)
    target = p if output_kind(out) == "folder" else p.parent
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise GmkitError(f"--out {out}: cannot write there ({probe} is not a writable folder)")


def save_images(x: torch.Tensor, out: str, metadata: dict[str, str] | None = None, start_index: int = 0) -> list[str]:
    """Write images in [-1, 1]; returns the paths written."""
    kind = output_kind(out)
    if kind in ("stdout", "grid") and x.shape[0] == 1:  # one image is written as itself, no grid border
        arr = to_uint8(x)[0]
        if kind == "grid":
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            to_pil(arr).save(out)
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

        save_tensors(Path(out), {"images": x.float().cpu()}, metadata or {})
        return [out]
    if kind == "grid":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        to_pil(make_grid(x)).save(out)
        return [out]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(x)):
        p = folder / f"{start_index + i:04d}.png"
        to_pil(arr).save(p)
        paths.append(str(p))
    return paths


def open_image(path: str):
    """A Pillow image from a file or ``-`` (stdin), transparency composited onto white."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path == "-":
            im = Image.open(io.BytesIO(sys.stdin.buffer.read()))
        else:
            im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise GmkitError(f"{path}: no such image") from None
    except (OSError, UnidentifiedImageError) as e:
        raise GmkitError(f"{path}: cannot read image ({e})") from None
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im


def load_image_file(path: str, channels: int, size: int) -> torch.Tensor:
    """One image file (or ``-`` for stdin) as (1, C, size, size) in [-1, 1]."""
    im = open_image(path)
    if im.size != (size, size):
        print(f"gmkit: {path}: resized to {size}x{size} for this model", file=sys.stderr)
    return pil_tensor(im, channels, size)


def pil_tensor(im, channels: int, size: int) -> torch.Tensor:
    """A Pillow image centre-cropped and resized to (1, C, size, size) in [-1, 1]."""
    from PIL import Image, ImageOps

    im = ImageOps.fit(im.convert("L" if channels == 1 else "RGB"), (size, size), Image.Resampling.LANCZOS)
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
        if self.tensor is not None:
            yield from self.tensor.split(size)
            return
        from PIL import Image, ImageOps

        c, h, w = self.shape
        for i in range(0, self.count, size):
            arrays = []
            for f in self.files[i:i + size]:
                im = open_image(str(f)).convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = ImageOps.fit(im, (w, h), Image.Resampling.LANCZOS)
                a = np.asarray(im, dtype=np.uint8)
                arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            yield torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1

    def all(self) -> torch.Tensor:
        return self.tensor if self.tensor is not None else torch.cat(list(self.batches()))


def load_image_set(path: str) -> tuple[torch.Tensor, list[str]]:
    """An ``ImageSet`` read whole, and its notes."""
    images = ImageSet(path)
    return images.all(), images.notes


def load_input_image(path, channels: int, size_for, quiet: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """An ``--image`` for a model, as (1, C, h, w) in [-1, 1], and its original (width, height).

    ``path`` is a file, ``-`` (stdin) or a Pillow image. ``size_for(height, width) -> (h, w)`` is the
    size the model takes (``Family.input_size``); any other size is resized (centre-cropped if the
    aspect differs) and said so, as is a colour change.
    """
    from PIL import Image, ImageOps

    im = path if isinstance(path, Image.Image) else open_image(path)
    name = "the image" if isinstance(path, Image.Image) else path
    original = im.size
    h, w = size_for(im.height, im.width)
    if im.size != (w, h):
        crop = abs(im.width / im.height - w / h) > 0.01
        _note(f"{name}: {im.width}x{im.height} image {'centre-cropped and ' if crop else ''}resized to {w}x{h} for this model", quiet)
    grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
    if channels == 1 and not grey:
        _note(f"{name}: colour image converted to greyscale for this model", quiet)
    im = ImageOps.fit(im.convert("L" if channels == 1 else "RGB"), (w, h), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())[None] / 127.5 - 1, original


def load_mask(path, image_size: tuple[int, int], size: tuple[int, int], quiet: bool = False) -> torch.Tensor:
    """An inpainting mask as (1, 1, h, w) of 0/1, 1 = generate: white (grey >= 50%) is filled, black kept.

    A mask of another size than the image (``image_size``, width x height as read) is resized to
    it first, then cropped and resized as the image was, to ``size`` (h, w); all said on stderr.
    """
    from PIL import Image, ImageOps

    im = (path if isinstance(path, Image.Image) else open_image(path)).convert("L")
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
