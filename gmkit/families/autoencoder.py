"""The first stage of latent diffusion: a KL-regularised autoencoder (Rombach et al. 2022, section 3).

Not a generative model by itself (its KL weight is tiny, so its latent is not a usable prior):
it compresses images for the ``ldm`` family. ``gmkit train autoencoder`` trains it; ``gmkit train
ldm`` trains one first when it is not given one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import GmkitError
from ..nn.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from .base import DECODE, ENCODE, Family


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    image_size: int = 32
    vae: AutoencoderKLConfig = field(default_factory=AutoencoderKLConfig)
    kl_weight: float = 1e-4  # on the KL summed over latent elements, per image pixel: a light touch
    l2_weight: float = 1.0  # reconstruction = L1 + l2_weight * MSE
    scaling_factor: float = 1.0  # 1 / std of the latents, measured after training (the LDM's latent scale)


class Autoencoder(Family):
    name = "autoencoder"
    Config = AutoencoderConfig
    capabilities = frozenset({ENCODE, DECODE})
    latent_key = "mean"
    train_defaults = {"lr": 4e-4, "preview": 0, "ema_decay": 0.999, "batch_size": 32}

    def __init__(self, config: AutoencoderConfig):
        super().__init__(config)
        self.vae = AutoencoderKL(dataclasses.replace(config.vae, in_channels=config.in_channels,
                                                     out_channels=config.in_channels))
        if config.image_size % self.vae.factor:
            raise GmkitError(f"image size {config.image_size} is not divisible by the autoencoder's factor {self.vae.factor}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config.image_size // self.vae.factor
        return (self.config.vae.latent_channels, s, s)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        mean, logvar = self.vae.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()  # reparameterised posterior sample
        rec = self.vae.decode(z).float()
        l1 = (rec - x).abs().mean()
        l2 = F.mse_loss(rec, x)
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).sum((1, 2, 3)).mean() / x[0].numel()
        return {"loss": l1 + self.config.l2_weight * l2 + self.config.kl_weight * kl, "l1": l1, "mse": l2, "kl": kl}

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        dtype = next(self.parameters()).dtype
        mean, logvar = self.vae.encode(x.to(self.device, dtype))
        return {"mean": mean.float(), "logvar": logvar.float()}

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, **_: Any) -> torch.Tensor:
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise GmkitError(f"autoencoder decode: latents of shape {tuple(z.shape)}, this model needs "
                             f"(N, {', '.join(map(str, self.latent_shape))})")
        dtype = next(self.parameters()).dtype
        return self.vae.decode(z.to(self.device, dtype)).float().clamp(-1, 1)
