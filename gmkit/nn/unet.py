"""The denoising UNet of DDPM (Ho et al. 2020), sized by a config.

Layout: conv_in -> down blocks (resnets [+ attention], downsampler) -> mid block
(resnet, attention, resnet) -> up blocks (resnets on concatenated skips [+ attention],
upsampler) -> GroupNorm, SiLU, conv_out. Module names mirror the public reference layout so
diffusers-format ``UNet2DModel`` weights map onto it by renaming keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, ResnetBlock, SelfAttention, TimestepEmbedding, Upsample, group_norm, timestep_embedding
from .transformer import Transformer2D


@dataclass
class UNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    sample_size: int = 28
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1  # 2 is the DDPM paper; 1 trains ~45% faster on a CPU for MNIST-sized data
    # Which blocks (by index, 0 = full resolution) get self-attention. Attention is costly at
    # high resolution, so the defaults use it only at the lowest one.
    attention_blocks: list[int] = field(default_factory=lambda: [2])
    mid_attention: bool = True
    head_dim: int = 32
    norm_groups: int = 8
    dropout: float = 0.0
    num_classes: int = 0  # > 0: class-conditional; label num_classes is the "no label" token
    # > 0: text-conditional. Attention blocks become transformer blocks with cross-attention to
    # prompt states of this width (latent diffusion).
    cross_attention_dim: int = 0
    transformer_depth: int = 1
    # Options that public (diffusers-format) checkpoints use; the defaults are gmkit's own layout.
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True  # timestep embedding: cos first (False: sin first)
    freq_shift: float = 0.0  # timestep embedding: exponents divided by half_dim - freq_shift
    downsample_padding: int = 1  # 0: pad right/bottom by one, then a stride-2 convolution
    num_heads: int = 0  # > 0: transformer blocks use this many heads at every level (head_dim follows)
    use_linear_projection: bool = False  # transformer blocks project in/out with Linear (SD 2.x), not 1x1 conv


def _attention(ch: int, cfg: "UNetConfig") -> nn.Module:
    if cfg.cross_attention_dim > 0:
        head_dim = ch // cfg.num_heads if cfg.num_heads > 0 else cfg.head_dim
        return Transformer2D(ch, head_dim, cfg.cross_attention_dim, cfg.norm_groups, cfg.transformer_depth,
                             cfg.use_linear_projection)
    return SelfAttention(ch, cfg.head_dim, cfg.norm_groups, cfg.norm_eps)


def _attend(module: nn.Module, x: torch.Tensor, context, mask) -> torch.Tensor:
    return module(x, context, mask) if isinstance(module, Transformer2D) else module(x)


class DownBlock(nn.Module):
    def __init__(self, in_ch, out_ch, temb_dim, layers, attention, downsample, cfg: UNetConfig):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, temb_dim, cfg.dropout, cfg.norm_groups, cfg.norm_eps) for i in range(layers))
        self.attentions = nn.ModuleList(_attention(out_ch, cfg) for _ in range(layers)) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(out_ch, cfg.downsample_padding)]) if downsample else None

    def forward(self, x, temb, skips: list, context=None, mask=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = _attend(self.attentions[i], x, context, mask)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, in_ch, out_ch, skip_chs: list[int], temb_dim, attention, upsample, cfg: UNetConfig):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock((in_ch if i == 0 else out_ch) + s, out_ch, temb_dim, cfg.dropout, cfg.norm_groups, cfg.norm_eps)
            for i, s in enumerate(skip_chs))
        self.attentions = nn.ModuleList(_attention(out_ch, cfg) for _ in skip_chs) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x, temb, skips: list, context=None, mask=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = _attend(self.attentions[i], x, context, mask)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size=skips[-1].shape[-2:] if skips else None)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch, temb_dim, attention, cfg: UNetConfig):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, temb_dim, cfg.dropout, cfg.norm_groups, cfg.norm_eps),
                                      ResnetBlock(ch, ch, temb_dim, cfg.dropout, cfg.norm_groups, cfg.norm_eps)])
        self.attentions = nn.ModuleList([_attention(ch, cfg)]) if attention else None

    def forward(self, x, temb, context=None, mask=None):
        x = self.resnets[0](x, temb)
        if self.attentions is not None:
            x = _attend(self.attentions[0], x, context, mask)
        return self.resnets[1](x, temb)


class UNet(nn.Module):
    """``forward(x, t, class_labels=None, context=None, context_mask=None) -> prediction`` shaped like ``x``.

    ``context`` (B, L, cross_attention_dim) and its mask (B, L) are the prompt's token states.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        chs = list(cfg.block_out_channels)
        temb_dim = chs[0] * 4
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chs[0], temb_dim)
        self.class_embedding = nn.Embedding(cfg.num_classes + 1, temb_dim) if cfg.num_classes > 0 else None

        n = len(chs)
        self.down_blocks = nn.ModuleList()
        skip_chs = [chs[0]]
        in_ch = chs[0]
        for i, out_ch in enumerate(chs):
            last = i == n - 1
            self.down_blocks.append(DownBlock(in_ch, out_ch, temb_dim, cfg.layers_per_block,
                                              i in cfg.attention_blocks, not last, cfg))
            skip_chs += [out_ch] * cfg.layers_per_block + ([] if last else [out_ch])
            in_ch = out_ch

        self.mid_block = MidBlock(chs[-1], temb_dim, cfg.mid_attention, cfg)

        self.up_blocks = nn.ModuleList()
        in_ch = chs[-1]
        for i, out_ch in enumerate(reversed(chs)):
            level = n - 1 - i
            block_skips = [skip_chs.pop() for _ in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(UpBlock(in_ch, out_ch, block_skips, temb_dim,
                                          level in cfg.attention_blocks, level != 0, cfg))
            in_ch = out_ch

        self.conv_norm_out = group_norm(chs[0], cfg.norm_groups, cfg.norm_eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embedding(timestep_embedding(t, self.cfg.block_out_channels[0], flip_sin_to_cos=self.cfg.flip_sin_to_cos,
                                                      freq_shift=self.cfg.freq_shift).to(x.dtype))
        if self.class_embedding is not None:
            if class_labels is None:  # unconditional: the reserved "no label" token
                class_labels = torch.full((x.shape[0],), self.cfg.num_classes, device=x.device, dtype=torch.long)
            temb = temb + self.class_embedding(class_labels)

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, temb, skips, context, context_mask)
        h = self.mid_block(h, temb, context, context_mask)
        for block in self.up_blocks:
            h = block(h, temb, skips, context, context_mask)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
