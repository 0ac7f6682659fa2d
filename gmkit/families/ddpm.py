"""Pixel-space diffusion: a UNet trained as DDPM (Ho et al. 2020), optionally class-conditional with
classifier-free guidance, sampled by any sampler of ``diffusion/samplers`` (DDPM, DDIM, DPM-Solver++,
the probability-flow ODE and score-SDE samplers), edited (img2img, inpainting) and inverted.

``ddpm`` and ``ddim`` are the same trained network; they differ only in the sampler used. The
noise process (schedule, noising, target, loss) is a ``DiffusionProcess`` this family holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion import sampling
from ..diffusion.process import DiffusionProcess, ProcessConfig
from ..diffusion.sampling import SAMPLING_OPTIONS
from ..errors import GmkitError
from ..nn.unet import UNet, UNetConfig
from .base import CLASS_COND, ENCODE, LIKELIHOOD, SAMPLE, STEPS, DataInfo, Family, SamplingPlan, fit_unet


@dataclass
class DDPMConfig(ProcessConfig):
    unet: UNetConfig = field(default_factory=UNetConfig)
    class_dropout: float = 0.1  # share of labels replaced by "no label" in training (enables guidance)


class DDPM(Family):
    name = "ddpm"
    Config = DDPMConfig
    capabilities = frozenset({SAMPLE, ENCODE, STEPS, CLASS_COND, LIKELIHOOD})
    sample_options = SAMPLING_OPTIONS | {"class_label", "guidance"}
    likelihood_steps = 32  # Heun steps of the probability-flow ODE for bits/dim
    compare_likelihood_images = 64
    preview_options = {"sampler": "ddim", "steps": 50}
    default_sampler = "ddpm"
    sweep_sampler = "ddim"
    class_conditioning = "optional"

    def __init__(self, config: DDPMConfig):
        super().__init__(config)
        self.process = DiffusionProcess.discrete(config)
        self.unet = UNet(config.unet)

    @property
    def image_shape(self):
        u = self.config.unet
        return (u.in_channels, u.sample_size, u.sample_size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of what the sampler denoises: the image itself."""
        return self.image_shape

    @property
    def num_classes(self) -> int:
        return self.config.unet.num_classes

    @classmethod
    def fit_config(cls, config, data: DataInfo, conditional: bool):
        """The UNet fitted to the data: channels in and out, resolution, classes."""
        return dataclasses.replace(config, unet=fit_unet(config.unet, data, cls.classes_to_train(data, conditional)))

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None) -> SamplingPlan:
        return SamplingPlan(*sampling.plan_summary(self.process, sampler or self.default_sampler, steps))

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0 = batch["image"]
        # Labels are drawn inside the call, after the process has drawn levels and noise.
        return self.process.loss(lambda x, t: self.unet(x, t, self._train_labels(batch.get("label"), x0.shape[0], x0.device)), x0)

    def _train_labels(self, labels, b, device):
        k = self.config.unet.num_classes
        if k <= 0:
            return None
        if labels is None:
            return torch.full((b,), k, device=device, dtype=torch.long)
        drop = torch.rand(b, device=device) < self.config.class_dropout
        return torch.where(drop, torch.full_like(labels, k), labels)

    # -- sampling -----------------------------------------------------------------------------
    def network(self, n: int, class_label: int | None = None, guidance: float | None = None, **_: Any):
        """The UNet as ``net(x_t, c_noise)`` for a class (or none); guidance against the reserved "no label" class."""
        labels = self.class_labels(class_label, n, self.device)
        if labels is None:
            return sampling.unet_network(self.unet)
        null = torch.full_like(labels, self.config.unet.num_classes)
        return sampling.unet_network(self.unet, {"class_labels": labels}, {"class_labels": null}, guidance)

    def denoiser(self, n: int = 1, **options: Any):
        """This network as a denoiser D(x, sigma) with its conditioning applied (``diffusion/process.py``)."""
        return self.process.denoiser(self.network(n, **options))

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], sampler: str | None = None, callback=None, **options: Any) -> torch.Tensor:
        x = sampling.sample(self.process, self.denoiser(len(noise), **options), noise, self.sample_shape, self.device,
                            sampler or self.default_sampler, callback=callback, **options)
        return x.clamp(-1, 1)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, steps: int | None = None, class_label: int | None = None,
               refine: int | None = None, callback=None, sampler: str | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """DDIM inversion (the default): the starting noise from which deterministic DDIM regenerates ``x``;
        ``sampler="ode"``: the probability-flow ODE latent (``sample --sampler heun`` decodes it)."""
        den = self.denoiser(x.shape[0], class_label=class_label)
        return sampling.encode(self.process, den, x.to(self.device, torch.float32), sampler, steps, refine, callback)

    def bits_per_dim(self, x: torch.Tensor, labels=None, steps: int | None = None, batch_size: int = 50,
                     seed: int = 0) -> dict:
        """Held-out bits/dim through the probability-flow ODE (uniform dequantization, Hutchinson trace)."""
        from ..diffusion.ode_likelihood import bits_per_dim

        if self.config.unet.num_classes > 0:
            raise GmkitError(f"bits/dim of a class-conditional {self.name} model is not implemented")
        return bits_per_dim(self.denoiser(), x.to(self.device), steps or self.likelihood_steps, batch_size, seed)
