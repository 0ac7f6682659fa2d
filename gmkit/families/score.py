"""Score-based models (Song & Ermon 2019; Song et al. 2021): a noise-conditional score network
trained by denoising score matching on a VE (NCSN) or VP SDE, sampled by Langevin dynamics, the
reverse SDE, predictor-corrector or the probability-flow ODE (or any other diffusion sampler), with
an exact ODE likelihood.

The network is the shared UNet predicting eps = -sigma * score from the input scaled by
1 / sqrt(1 + sigma^2), conditioned on the SDE time as a fractional timestep: a ``DiffusionProcess``
on the SDE's continuous noise levels (``diffusion/process.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dataclasses

import torch

from ..diffusion import sampling
from ..diffusion.process import VESDE, VPSDE, DiffusionProcess
from ..diffusion.sampling import SAMPLING_OPTIONS
from ..errors import GmkitError
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
    loss_weighting: str = "none"  # none | min_snr: min(SNR, gamma) / SNR on the epsilon loss (Hang et al. 2023)
    min_snr_gamma: float = 5.0


class Score(Family):
    name = "score"
    Config = ScoreConfig
    capabilities = frozenset({SAMPLE, ENCODE, STEPS, LIKELIHOOD})
    sample_options = SAMPLING_OPTIONS
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
        return SamplingPlan(*sampling.plan_summary(self.process, sampler or self.default_sampler, steps))

    def __init__(self, config: ScoreConfig):
        super().__init__(config)
        c = config
        if c.sde == "ve":
            try:
                self.sde = VESDE(c.sigma_min, c.sigma_max)
            except ValueError as e:
                raise GmkitError(f"score config: {e}") from None
        elif c.sde == "vp":
            self.sde = VPSDE(c.beta_min, c.beta_max, train_t_min=c.t_min)
        else:
            raise GmkitError(f"score config: unknown sde {c.sde!r} (vp or ve)")
        try:
            self.process = DiffusionProcess(self.sde, "epsilon", loss_weighting=c.loss_weighting,
                                            min_snr_gamma=c.min_snr_gamma)
        except ValueError as e:
            raise GmkitError(f"score config: {e}") from None
        self.unet = UNet(config.unet)

    @property
    def image_shape(self):
        u = self.config.unet
        return (u.in_channels, u.sample_size, u.sample_size)

    def latent_description(self) -> dict:
        shape = list(self.image_shape)
        return {"kind": "none", "shape": shape,
                "text": f"none: works in data space (the probability-flow ODE maps an image to {'x'.join(map(str, shape))} noise)"}

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Denoising score matching (Vincent 2011) with lambda(sigma) = sigma^2 (Song et al. 2021, eq. 7):
        sigma^2 || s(x, sigma) + z / sigma ||^2 = || eps(x, sigma) - z ||^2, the process's epsilon loss."""
        return self.process.loss(lambda x, t: self.unet(x, t), batch["image"])

    # -- sampling -----------------------------------------------------------------------------
    def denoiser(self, n: int = 1, **_: Any):
        """This network as ``D(x, sigma)`` for the samplers in ``diffusion/samplers``."""
        return self.process.denoiser(sampling.unet_network(self.unet))

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], sampler: str | None = None, callback=None, **options: Any) -> torch.Tensor:
        x = sampling.sample(self.process, self.denoiser(), noise, self.image_shape, self.device,
                            sampler or self.default_sampler, callback=callback, **options)
        return x.clamp(-1, 1)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, sampler: str | None = None, steps: int | None = None, callback=None,
               refine: int | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """The probability-flow ODE latent: integrate the ODE from the image up to sigma_max."""
        return sampling.encode(self.process, self.denoiser(), x.to(self.device, torch.float32), sampler, steps,
                               refine, callback, ode_only=True)

    def bits_per_dim(self, x: torch.Tensor, labels=None, steps: int | None = None, batch_size: int = 50,
                     seed: int = 0) -> dict:
        """Held-out bits/dim through the probability-flow ODE (uniform dequantization, Hutchinson trace)."""
        from ..diffusion.ode_likelihood import bits_per_dim

        return bits_per_dim(self.denoiser(), x.to(self.device), steps or self.likelihood_steps, batch_size, seed)
