"""Small convolutional encoders and decoders for the autoencoder families (VAE, AugVAE, VQ-VAE).

Each stride-2 stage halves the resolution; ``channels=(32, 64)`` maps 28x28 to 7x7. Kept small
on purpose: the bundled MNIST models train on one CPU thread in minutes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """x + conv1x1(SiLU(conv3x3(SiLU(x)))) (the VQ-VAE paper's residual block)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class ConvEncoder(nn.Module):
    """(B, C_in, S, S) -> (B, out_ch, S / 2^len(channels), same)."""

    def __init__(self, in_ch: int, channels: list[int], out_ch: int, res_blocks: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_ch
        for i, ch in enumerate(channels):
            if i:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(prev, ch, 4, stride=2, padding=1))
            prev = ch
        layers += [ResBlock(prev) for _ in range(res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(prev, out_ch, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, in_ch, s, s) -> (B, out_ch, s * 2^len(channels), same); ``channels`` listed encoder-wise."""

    def __init__(self, in_ch: int, channels: list[int], out_ch: int, res_blocks: int = 1):
        super().__init__()
        rev = list(reversed(channels))
        layers: list[nn.Module] = [nn.Conv2d(in_ch, rev[0], 3, padding=1)]
        layers += [ResBlock(rev[0]) for _ in range(res_blocks)]
        for i, ch in enumerate(rev):
            nxt = rev[i + 1] if i + 1 < len(rev) else rev[-1]
            layers += [nn.SiLU(), nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(rev[-1], out_ch, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
