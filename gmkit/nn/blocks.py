"""Shared building blocks: timestep embedding, residual block, self-attention, resamplers.

Attribute names follow the public DDPM/LDM reference layout (as diffusers spells it:
``norm1``, ``conv1``, ``time_emb_proj``, ``to_q`` ...), so public checkpoints map onto these
modules by renaming keys only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cos first (DDPM, Ho et al. 2020).

    ``flip_sin_to_cos=False`` puts sin first and ``freq_shift=1`` divides the exponents by half - 1,
    as some public checkpoints (diffusers' ``Timesteps`` options) were trained.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on the sinusoidal embedding."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation the GAN and translation networks name in their configs: instance, batch,
    group (8 groups) or none."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def group_norm(channels: int, groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    # Small networks have fewer channels than the usual 32 groups; use the largest divisor.
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=eps)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between (DDPM, Ho et al. 2020)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float = 0.0, groups: int = 32,
                 eps: float = 1e-5):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_ch) if temb_dim else None
        self.norm2 = group_norm(out_ch, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over spatial positions, with a residual connection.

    Uses ``F.scaled_dot_product_attention`` so the fused kernels run where they exist.
    """

    def __init__(self, channels: int, head_dim: int = 32, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.group_norm = group_norm(channels, groups, eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(y).view(b, h * w, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.to_out[0](y.transpose(1, 2).reshape(b, h * w, c))
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the resolution.

    ``padding=0`` pads right and bottom by one first (the asymmetric padding of some public models).
    """

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to a target size, then a 3x3 convolution.

    Taking the size of the matching skip connection lets odd sizes (7 -> 14 -> 28) round-trip.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
