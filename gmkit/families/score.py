"""Score-based models (Song & Ermon 2019; Song et al. 2021): a noise-conditional score network
trained by denoising score matching on a VE (NCSN) or VP SDE, sampled by Langevin dynamics, the
reverse SDE, predictor-corrector or the probability-flow ODE, with an exact ODE likelihood.

The network is the shared UNet predicting eps = -sigma * score from the input scaled by
1 / sqrt(1 + sigma^2), conditioned on the SDE time as a fractional timestep (``diffusion/sde.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion import samplers, sde_samplers
from ..diffusion.ode_likelihood import bits_per_dim
from ..diffusion.sde import c_noise, dsm_loss, make_sde, sde_denoiser
from ..errors import GmkitError, OptionError
from ..nn.unet import UNet, UNetConfig
from .base import ENCODE, LIKELIHOOD, SAMPLE, STEPS, DataInfo, Family, SamplingPlan, TrainOption, fit_unet


@dataclass
class ScoreConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    sde: str = "ve"  # ve (NCSN, Song & Ermon 2019) | vp (continuous DDPM)
    # VE: sigma_max ~ the largest distance between two training images (Song & Ermon 2020,
    # technique 1; 31 for the MNIST subset in [-1, 1]).
    sigma_min: float = 0.01
    sigma_max: float = 35.0
    beta_min: float = 0.1  # VP
    beta_max: float = 20.0
    t_min: float = 1e-5  # smallest training time (VP; Song et al. 2021 use 1e-5)


class Score(Family):
    name = "score"
    Config = ScoreConfig
    capabilities = frozenset({SAMPLE, ENCODE, STEPS, LIKELIHOOD})
    sample_options = frozenset({"sampler", "steps", "init", "schedule", "snr"})
    preview_options = {"sampler": "heun", "steps": 10}
    default_sampler = "pc"  # what bench/compare use when the source names none
    sweep_sampler = "heun"  # compare's quality-vs-steps points
    likelihood_steps = 32  # Heun steps of the ODE for bits/dim
    compare_likelihood_images = 64  # ODE bits/dim costs ~50 network calls + backward passes per image
    train_options = {"sde": TrainOption("the noise process: ve (NCSN) or vp", str, ("ve", "vp"), config_key="sde",
                                        applies_to="score models (score)")}

    @classmethod
    def fit_config(cls, config, data: DataInfo, conditional: bool):
        return dataclasses.replace(config, unet=fit_unet(config.unet, data, cls.classes_to_train(data, conditional)))

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None) -> SamplingPlan:
        sampler = sampler or self.default_sampler
        if sampler not in sde_samplers.SAMPLERS:
            raise OptionError("sampler", f"{sampler!r} is not a sampler of {self.name} models "
                                         f"(known: {', '.join(sde_samplers.SAMPLERS)})")
        steps = steps or sde_samplers.DEFAULT_STEPS[sampler]
        return SamplingPlan(sampler, steps, sde_samplers.network_calls(sampler, steps))

    def __init__(self, config: ScoreConfig):
        super().__init__(config)
        try:
            self.sde = make_sde(config.sde, config.sigma_min, config.sigma_max, config.beta_min, config.beta_max)
        except ValueError as e:
            raise GmkitError(f"score config: {e}") from None
        self.unet = UNet(config.unet)

    @property
    def image_shape(self):
        u = self.config.unet
        return (u.in_channels, u.sample_size, u.sample_size)

    def _net(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(x.to(dtype).contiguous(memory_format=torch.channels_last), t).float()

    def latent_description(self) -> dict:
        shape = list(self.image_shape)
        return {"kind": "none", "shape": shape,
                "text": f"none: works in data space (the probability-flow ODE maps an image to {'x'.join(map(str, shape))} noise)"}

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t_min = self.config.t_min if self.config.sde == "vp" else 0.0
        return {"loss": dsm_loss(self.unet, self.sde, batch["image"], t_min)}

    # -- sampling -----------------------------------------------------------------------------
    def denoiser(self):
        """This network as ``D(x, sigma)`` for the samplers in ``diffusion/sde_samplers.py``."""
        return sde_denoiser(self._net, self.sde)

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        return c_noise(self.sde, self.sde.t(sigma))

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], sampler: str | None = None, steps: int | None = None,
               init: torch.Tensor | None = None, schedule: str | None = None, snr: float | None = None,
               callback=None, **_: Any) -> torch.Tensor:
        return sample_sde(self, self.denoiser(), noise, sampler or "pc", steps, init, schedule, snr, callback)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, sampler: str | None = None, steps: int | None = None, callback=None,
               **options: Any) -> dict[str, torch.Tensor]:
        """The probability-flow ODE latent: integrate the ODE from the image up to sigma_max."""
        return ode_encode(self, self.denoiser(), x, sampler or "ode", steps, options, callback)

    def bits_per_dim(self, x: torch.Tensor, labels=None, steps: int | None = None, batch_size: int = 50,
                     seed: int = 0) -> dict:
        """Held-out bits/dim through the probability-flow ODE (uniform dequantization, Hutchinson trace)."""
        return bits_per_dim(self.denoiser(), x.to(self.device), steps or self.likelihood_steps, batch_size, seed)


# -- shared with the DDPM family (one code path for every epsilon/score network) ------------------


def sample_sde(family: Family, denoiser, noise, sampler: str, steps, init, schedule, snr, callback) -> torch.Tensor:
    """Images from any denoiser with one of ``sde_samplers.SAMPLERS``, checking the options."""
    if sampler not in sde_samplers.SAMPLERS:
        raise GmkitError(f"unknown sampler {sampler!r} for {family.name} (known: {', '.join(sde_samplers.SAMPLERS)})")
    if schedule is not None and schedule not in ("karras", "geometric"):
        raise GmkitError(f"--schedule must be karras or geometric, got {schedule!r}")
    if snr is not None and sampler != "pc":
        raise GmkitError("--snr applies to the pc sampler only")
    if snr is not None and not snr > 0:
        raise GmkitError(f"--snr must be > 0, got {snr}")
    if steps is not None and steps < 1:
        raise GmkitError(f"--steps must be >= 1, got {steps}")
    shape = tuple(getattr(family, "sample_shape", family.image_shape))  # a latent, for latent diffusion
    if init is not None:
        if tuple(init.shape[1:]) != shape:
            raise GmkitError(f"--init holds shape {tuple(init.shape)}, this model needs (N, {', '.join(map(str, shape))})")
        x = init.to(family.device, torch.float32)
    else:
        x = samplers.randn((len(noise), *shape), noise, family.device)
    return sde_samplers.generate(denoiser, sampler, x, noise, steps, schedule, snr, callback).clamp(-1, 1)


def ode_encode(family: Family, denoiser, x: torch.Tensor, sampler: str, steps, options: dict, callback) -> dict:
    if sampler != "ode":
        raise GmkitError(f"{family.name} encodes with --sampler ode only, got {sampler!r}")
    extra = sorted(k for k, v in options.items() if v is not None)
    if extra:
        raise GmkitError(f"--sampler ode does not take {', '.join('--' + k.replace('_', '-') for k in extra)}")
    if steps is not None and steps < 1:
        raise GmkitError(f"--steps must be >= 1, got {steps}")
    x = x.to(family.device, torch.float32)
    return {"noise": sde_samplers.ode_encode(denoiser, x, steps or sde_samplers.DEFAULT_STEPS["heun"], callback=callback)}
