"""Differentiable augmentation for GAN training on little data (DiffAugment, Zhao et al. 2020).

The discriminator of a GAN trained on a few thousand images memorises them and stops teaching the
generator. DiffAugment applies the *same kind* of random, differentiable transformation to real and
generated images wherever the discriminator sees them (both of its updates and the generator's),
so the generator is never pushed to produce augmented-looking images, while the discriminator can
no longer memorise the training set. Policies (comma-separated, applied in this order):

- ``color``: random brightness (+-0.5) and contrast (x0.5-1.5) per image;
- ``translation``: shift by up to 1/8 of the size in each direction, per image (edges replicated,
  so a dark background stays dark; the paper pads with zeros);
- ``cutout``: a random square of half the size per image set to 0 (the paper's setting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(text: str) -> tuple[str, ...]:
    """``"translation,cutout"`` -> ("translation", "cutout"); "" -> (); ValueError naming a bad entry."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in names:
        if p not in POLICIES:
            raise ValueError(f"augment: unknown policy {p!r} (choose from {', '.join(POLICIES)}, comma-separated)")
    return names


def _color(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    ry, rx = max(1, round(h * ratio)), max(1, round(w * ratio))
    padded = F.pad(x, (rx, rx, ry, ry), mode="replicate").permute(0, 2, 3, 1)  # (N, H', W', C)
    dy = torch.randint(0, 2 * ry + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * rx + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = max(1, round(h * ratio)), max(1, round(w * ratio))
    top = torch.randint(0, h, (n, 1, 1), device=x.device) - sh // 2  # centres anywhere: squares may leave the frame
    left = torch.randint(0, w, (n, 1, 1), device=x.device) - sw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + sh) & (xs >= left) & (xs < left + sw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """``x`` (N, C, H, W) through the policies, each drawn independently per image (global RNG, so a
    resumed run draws the same augmentations)."""
    for p in policy:
        x = _OPS[p](x)
    return x
