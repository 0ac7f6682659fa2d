"""Pixel-space diffusion: DDPM training (Ho et al. 2020) with DDPM and DDIM sampling.

``ddpm`` and ``ddim`` are the same trained network; they differ only in the sampler used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..diffusion import samplers
from ..diffusion.schedules import alphas_cumprod, make_betas, sampling_timesteps
from ..errors import GmkitError
from ..nn.unet import UNet, UNetConfig
from .base import CLASS_COND, ENCODE, SAMPLE, STEPS, Family


@dataclass
class DiffusionConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | cosine
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # epsilon | v_prediction
    clip_sample: bool = True  # clamp predicted x_0 to [-1, 1] while sampling
    timestep_spacing: str = "trailing"  # leading | trailing | linspace
    steps_offset: int = 0
    class_dropout: float = 0.1  # share of labels replaced by "no label" in training (enables guidance)


class Diffusion(Family):
    name = "ddpm"
    Config = DiffusionConfig
    capabilities = frozenset({SAMPLE, ENCODE, STEPS, CLASS_COND})
    sample_options = frozenset({"sampler", "steps", "eta", "init", "class_label", "guidance"})
    preview_options = {"sampler": "ddim", "steps": 50}

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise GmkitError(f"prediction_type must be epsilon or v_prediction, got {config.prediction_type!r}")
        self.unet = UNet(config.unet)
        betas = make_betas(config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end)
        # A plain float64 CPU tensor, not a buffer: derived from the config, and it must survive
        # ``model.to(torch.float16)`` untouched.
        self.alphas_cumprod = alphas_cumprod(betas)

    @property
    def image_shape(self):
        u = self.config.unet
        return (u.in_channels, u.sample_size, u.sample_size)

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0 = batch["image"]
        b = x0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        a = self.alphas_cumprod.to(x0.device, torch.float32)[t].view(b, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # q(x_t | x_0), Ho et al. 2020 eq. 4
        labels = self._train_labels(batch.get("label"), b, x0.device)
        pred = self.unet(xt, t, labels)
        target = eps if self.config.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return {"loss": F.mse_loss(pred.float(), target)}

    def _train_labels(self, labels, b, device):
        k = self.config.unet.num_classes
        if k <= 0:
            return None
        if labels is None:
            return torch.full((b,), k, device=device, dtype=torch.long)
        drop = torch.rand(b, device=device) < self.config.class_dropout
        return torch.where(drop, torch.full_like(labels, k), labels)

    # -- sampling -----------------------------------------------------------------------------
    def eps_fn(self, class_label: torch.Tensor | None = None, guidance: float | None = None):
        """Adapt the network to ``eps(x, t)``: v-prediction converted, classifier-free guidance applied."""
        acp = self.alphas_cumprod
        dtype = next(self.unet.parameters()).dtype

        def net(x, t_vec, labels):
            return self.unet(x.to(dtype).contiguous(memory_format=torch.channels_last), t_vec, labels).float()

        def eps(x: torch.Tensor, t: int) -> torch.Tensor:
            t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            if class_label is not None and guidance is not None and guidance != 1.0:
                null = torch.full_like(class_label, self.config.unet.num_classes)
                out = net(torch.cat([x, x]), torch.cat([t_vec, t_vec]), torch.cat([class_label, null]))
                cond, uncond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)  # Ho & Salimans 2022
            else:
                out = net(x, t_vec, class_label)
            if self.config.prediction_type == "v_prediction":
                a = float(acp[t])
                out = a ** 0.5 * out + (1 - a) ** 0.5 * x
            return out

        return eps

    def timesteps(self, steps: int) -> list[int]:
        c = self.config
        try:
            return sampling_timesteps(c.num_train_timesteps, steps, c.timestep_spacing, c.steps_offset)
        except ValueError as e:
            raise GmkitError(f"--steps: {e}") from None

    def _labels(self, class_label, n, device):
        if class_label is None:
            return None
        k = self.config.unet.num_classes
        if k <= 0:
            raise GmkitError(f"this {self.name} model is unconditional; it cannot take --class")
        if not 0 <= class_label < k:
            raise GmkitError(f"--class must be between 0 and {k - 1}, got {class_label}")
        return torch.full((n,), class_label, device=device, dtype=torch.long)

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], sampler: str = "ddpm", steps: int | None = None,
               eta: float | None = None, init: torch.Tensor | None = None, class_label: int | None = None,
               guidance: float | None = None, callback=None, **_: Any) -> torch.Tensor:
        device = self.device
        n = len(noise)
        steps = steps or (self.config.num_train_timesteps if sampler == "ddpm" else 50)
        ts = self.timesteps(steps)
        if init is not None:
            if tuple(init.shape[1:]) != self.image_shape:
                raise GmkitError(f"--init holds shape {tuple(init.shape)}, this model needs (N, {', '.join(map(str, self.image_shape))})")
            x = init.to(device=device, dtype=torch.float32)
        else:
            x = samplers.randn((n, *self.image_shape), noise, device)
        eps = self.eps_fn(self._labels(class_label, x.shape[0], device), guidance)
        acp = self.alphas_cumprod
        clip = self.config.clip_sample
        if sampler == "ddpm":
            if eta is not None:
                raise GmkitError("--eta applies to the ddim sampler only")
            return samplers.ddpm(eps, x, ts, acp, noise=noise, clip=clip, callback=callback)
        if sampler == "ddim":
            return samplers.ddim(eps, x, ts, acp, eta=eta or 0.0, noise=noise, clip=clip, callback=callback)
        raise GmkitError(f"unknown sampler {sampler!r} for {self.name} (known: {', '.join(samplers.SAMPLERS)})")

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, steps: int | None = None, class_label: int | None = None,
               refine: int | None = None, callback=None, **_: Any) -> dict[str, torch.Tensor]:
        """DDIM inversion: the starting noise from which deterministic DDIM regenerates ``x``.

        ``refine`` fixed-point iterations per step (default 2) make it the sampler's exact inverse.
        """
        ts = self.timesteps(steps or 50)
        x = x.to(self.device, torch.float32)
        eps = self.eps_fn(self._labels(class_label, x.shape[0], x.device))
        return {"noise": samplers.ddim_invert(eps, x, ts, self.alphas_cumprod, refine=2 if refine is None else refine,
                                              callback=callback)}
