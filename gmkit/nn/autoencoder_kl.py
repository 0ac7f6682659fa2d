"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022, section 3).

An encoder maps an image to the mean and log-variance of a diagonal Gaussian over a latent that is
``2^(len(block_out_channels) - 1)`` times smaller per side; a decoder maps latents back. The layout
and attribute names follow the public reference (diffusers' ``AutoencoderKL``: ``encoder.conv_in``,
``encoder.down_blocks[i].resnets[j]``, ``...downsamplers[0].conv``, ``mid_block.{resnets,attentions}``,
``conv_norm_out``, ``conv_out``, ``quant_conv``, ``post_quant_conv``), so public weights map onto it
by renaming keys only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResnetBlock, SelfAttention, group_norm


@dataclass
class AutoencoderKLConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # 3 blocks: factor 4
    layers_per_block: int = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    mid_attention: bool = True


class DownEncoderBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, downsample: bool, cfg: AutoencoderKLConfig):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, None, 0.0, cfg.norm_num_groups,
                                                 cfg.norm_eps) for i in range(layers))
        self.downsamplers = nn.ModuleList([PadDownsample(out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, upsample: bool, cfg: AutoencoderKLConfig):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, None, 0.0, cfg.norm_num_groups,
                                                 cfg.norm_eps) for i in range(layers))
        self.upsamplers = nn.ModuleList([NearestUpsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class PadDownsample(nn.Module):
    """Stride-2 3x3 convolution after padding right and bottom by one (the reference's asymmetric pad)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class NearestUpsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class AutoencoderMidBlock(nn.Module):
    def __init__(self, ch: int, cfg: AutoencoderKLConfig):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, None, 0.0, cfg.norm_num_groups, cfg.norm_eps) for _ in range(2)])
        # One head over all channels, as the reference's autoencoder attention.
        self.attentions = nn.ModuleList([SelfAttention(ch, ch, cfg.norm_num_groups, cfg.norm_eps)]) if cfg.mid_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        chs = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock(chs[max(i - 1, 0)], ch, cfg.layers_per_block, i < len(chs) - 1, cfg) for i, ch in enumerate(chs))
        self.mid_block = AutoencoderMidBlock(chs[-1], cfg)
        self.conv_norm_out = group_norm(chs[-1], cfg.norm_num_groups, cfg.norm_eps)
        self.conv_out = nn.Conv2d(chs[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for b in self.down_blocks:
            h = b(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        rev = list(reversed(cfg.block_out_channels))
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = AutoencoderMidBlock(rev[0], cfg)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock(rev[max(i - 1, 0)], ch, cfg.layers_per_block + 1, i < len(rev) - 1, cfg) for i, ch in enumerate(rev))
        self.conv_norm_out = group_norm(rev[-1], cfg.norm_num_groups, cfg.norm_eps)
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            h = b(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    """``encode(x) -> (mean, logvar)``, ``decode(z) -> x``; latents are unscaled here (the LDM scales them)."""

    def __init__(self, cfg: AutoencoderKLConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.cfg.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))
