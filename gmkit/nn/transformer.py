"""Spatial transformer blocks: how a latent-diffusion UNet reads a prompt (Rombach et al. 2022, fig. 3).

Each block flattens the feature map into tokens and applies self-attention, cross-attention to
the text encoder's per-token states, and a GEGLU feed-forward, each pre-normed and residual
(Vaswani et al. 2017; Shazeer 2020 for GEGLU). Attribute names follow the public reference
(diffusers' ``Transformer2DModel`` / ``BasicTransformerBlock``: ``norm``, ``proj_in``,
``transformer_blocks[0].{norm1, attn1, norm2, attn2, norm3, ff.net}``, ``proj_out``), so Stable
Diffusion weights map onto these modules by renaming keys only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import group_norm


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B, N, dim) over ``context`` (B, L, context_dim), or over itself.

    ``mask`` (B, L) marks the context tokens that exist (True); padding is not attended to.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        attn_mask = None if mask is None or context is None else mask[:, None, None, :].to(torch.bool)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[0](y.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    """Linear to twice the width, then value * GELU(gate) (Shazeer 2020)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net[1] is the reference's dropout slot; kept so key names line up (net.0.proj, net.2).
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """GroupNorm, project to tokens, transformer block(s), project back, add the input."""

    def __init__(self, channels: int, head_dim: int, context_dim: int, groups: int = 32, depth: int = 1,
                 linear_projection: bool = False, eps: float = 1e-6):
        super().__init__()
        heads = max(1, channels // head_dim)
        inner = heads * (channels // heads)
        self.linear_projection = linear_projection  # SD 2.x projects with Linear, SD 1.x with 1x1 conv
        self.norm = group_norm(channels, groups, eps)
        self.proj_in = nn.Linear(channels, inner) if linear_projection else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, inner // heads, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if linear_projection else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if self.linear_projection:
            y = self.proj_in(y.flatten(2).transpose(1, 2))
        else:
            y = self.proj_in(y).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context, mask)
        if self.linear_projection:
            y = self.proj_out(y).transpose(1, 2).reshape(b, c, h, w)
        else:
            y = self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w))
        return x + y
