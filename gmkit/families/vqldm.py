"""Unconditional latent diffusion on a VQ autoencoder's latent (Rombach et al. 2022), as CompVis
published it for CelebA-HQ, LSUN and others (diffusers' ``LDMPipeline``: ``VQModel`` + ``UNet2DModel``).

The diffusion part is a ``DiffusionProcess`` with any sampler, run on latents; sampling ends by
dividing by the latent scale, quantizing to the codebook and decoding. Models of this family come from public
checkpoints (``gmkit sample CompVis/ldm-celebahq-256``); gmkit does not train them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion import sampling
from ..diffusion.process import DiffusionProcess, ProcessConfig
from ..errors import GmkitError
from ..nn.autoencoder_vq import VQModel, VQModelConfig
from ..nn.unet import UNet, UNetConfig
from .base import DECODE, SAMPLE, STEPS, Family, SamplingPlan


@dataclass
class VQLatentDiffusionConfig(ProcessConfig):
    unet: UNetConfig = field(default_factory=UNetConfig)
    vq: VQModelConfig = field(default_factory=VQModelConfig)
    scaling_factor: float = 1.0  # latents are divided by this before decoding


class VQLatentDiffusion(Family):
    name = "vqldm"
    Config = VQLatentDiffusionConfig
    capabilities = frozenset({SAMPLE, STEPS, DECODE})
    sample_options = frozenset({"sampler", "steps", "eta", "init", "schedule", "snr"})
    preview_options = {"sampler": "ddim", "steps": 50}
    default_sampler = "ddpm"
    sweep_sampler = "ddim"

    def __init__(self, config: VQLatentDiffusionConfig):
        super().__init__(config)
        self.process = DiffusionProcess.discrete(config)
        self.unet = UNet(config.unet)
        self.vqvae = VQModel(config.vq)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        u = self.config.unet
        return (u.in_channels, u.sample_size, u.sample_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        s = self.config.unet.sample_size * self.vqvae.factor
        return (self.config.vq.out_channels, s, s)

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None) -> SamplingPlan:
        return SamplingPlan(*sampling.plan_summary(self.process, sampler or self.default_sampler, steps))

    def forward(self, batch):
        raise GmkitError("vqldm models come from public checkpoints; gmkit does not train them")

    def denoiser(self, n: int = 1, **_: Any):
        return self.process.denoiser(sampling.unet_network(self.unet))

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], sampler: str | None = None, callback=None, **options: Any) -> torch.Tensor:
        z = sampling.sample(self.process, self.denoiser(), noise, self.sample_shape, self.device,
                            sampler or self.default_sampler, callback=callback, **options)
        return self.decode(z)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, **_: Any) -> torch.Tensor:
        """Latents (N, C, h, w) as the sampler leaves them -> images in [-1, 1].

        Decodes the whole batch at once; when that runs out of GPU memory, one image at a time.
        """
        if z.ndim != 4 or tuple(z.shape[1:]) != self.sample_shape:
            raise GmkitError(f"vqldm decode: latents of shape {tuple(z.shape)}, this model needs "
                             f"(N, {', '.join(map(str, self.sample_shape))})")
        dtype = next(self.vqvae.parameters()).dtype
        z = (z / self.config.scaling_factor).to(self.device, dtype)
        try:
            x = self.vqvae.decode(z)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            x = torch.cat([self.vqvae.decode(z[i:i + 1]) for i in range(z.shape[0])])
        return x.float().clamp(-1, 1)
