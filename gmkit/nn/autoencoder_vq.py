"""The vector-quantised autoencoder of latent diffusion (VQ-regularised first stage, Rombach et al. 2022).

Encoder and decoder are latent diffusion's convolutional ones (``autoencoder_kl``), with a
single-width encoder output; between them a codebook maps each latent vector to its nearest entry
(``gmkit.nn.quantizer.nearest``). Attribute names follow the public reference (diffusers'
``VQModel``: ``encoder``, ``quant_conv``, ``quantize.embedding``, ``post_quant_conv``, ``decoder``),
so public weights map onto it by renaming keys only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .autoencoder_kl import AutoencoderKLConfig, Decoder, Encoder
from .quantizer import nearest


@dataclass
class VQModelConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [64])
    layers_per_block: int = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    mid_attention: bool = True
    num_vq_embeddings: int = 256
    vq_embed_dim: int = 3


class Codebook(nn.Module):
    """Nearest-entry lookup in ``embedding.weight`` (K, D) for a (B, D, h, w) map."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx, _ = nearest(flat, self.embedding.weight)
        return self.embedding.weight[idx].to(z.dtype).view(b, h, w, d).permute(0, 3, 1, 2)


class VQModel(nn.Module):
    """``encode(x) -> h`` (before quantization), ``decode(h) -> x`` (quantizes first, as the reference)."""

    def __init__(self, cfg: VQModelConfig):
        super().__init__()
        self.cfg = cfg
        kl = AutoencoderKLConfig(in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                                 latent_channels=cfg.latent_channels, block_out_channels=list(cfg.block_out_channels),
                                 layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
                                 norm_eps=cfg.norm_eps, mid_attention=cfg.mid_attention)
        self.encoder = Encoder(kl)
        # One output per latent channel (the KL encoder emits mean and log-variance: twice as many).
        self.encoder.conv_out = nn.Conv2d(cfg.block_out_channels[-1], cfg.latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.vq_embed_dim, 1)
        self.quantize = Codebook(cfg.num_vq_embeddings, cfg.vq_embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.vq_embed_dim, cfg.latent_channels, 1)
        self.decoder = Decoder(kl)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.cfg.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        q = self.quantize(h) if quantize else h
        return self.decoder(self.post_quant_conv(q))
