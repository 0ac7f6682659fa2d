"""Pixel-space diffusion: DDPM training (Ho et al. 2020) with DDPM and DDIM sampling.

``ddpm`` and ``ddim`` are the same trained network; they differ only in the sampler used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..diffusion import samplers, sde_samplers
from ..diffusion.schedules import alphas_cumprod, make_betas, sampling_timesteps, solver_timesteps
from ..errors import GmkitError
from ..nn.unet import UNet, UNetConfig
from .base import CLASS_COND, ENCODE, LIKELIHOOD, SAMPLE, STEPS, DataInfo, Family, SamplingPlan, fit_unet
from .score import ode_encode, sample_sde


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
    solver_spacing: str | None = None  # DPM-Solver++'s timestep spacing where it differs; None: timestep_spacing
    set_alpha_to_one: bool = True  # DDIM's last step lands on alpha-bar 1 (False: on alpha-bar_0, as SD's schedulers)
    variance_type: str = "fixed_small"  # DDPM's step variance: fixed_small | fixed_large | learned_range (samplers.step_variance)
    class_dropout: float = 0.1  # share of labels replaced by "no label" in training (enables guidance)


class Diffusion(Family):
    name = "ddpm"
    Config = DiffusionConfig
    capabilities = frozenset({SAMPLE, ENCODE, STEPS, CLASS_COND, LIKELIHOOD})
    sample_options = frozenset({"sampler", "steps", "eta", "init", "class_label", "guidance", "schedule", "snr",
                                "image", "mask", "strength", "resample", "jump"})
    likelihood_steps = 32  # Heun steps of the probability-flow ODE for bits/dim (score.py)
    compare_likelihood_images = 64
    preview_options = {"sampler": "ddim", "steps": 50}
    default_sampler = "ddpm"
    class_conditioning = "optional"

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

    @property
    def num_classes(self) -> int:
        return self.config.unet.num_classes

    @classmethod
    def fit_config(cls, config, data: DataInfo, conditional: bool):
        """The UNet fitted to the data: channels in and out, resolution, classes."""
        return dataclasses.replace(config, unet=fit_unet(config.unet, data, cls.classes_to_train(data, conditional)))

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None) -> SamplingPlan:
        sampler = sampler or self.default_sampler
        if sampler in sde_samplers.SAMPLERS:  # the score-view samplers: steps are noise levels
            steps = steps or sde_samplers.DEFAULT_STEPS[sampler]
            return SamplingPlan(sampler, steps, sde_samplers.network_calls(sampler, steps))
        steps = steps or (self.config.num_train_timesteps if sampler == "ddpm" else 50)
        return SamplingPlan(sampler, steps, steps)

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
    def guided_eps(self, cond: dict, uncond: dict | None = None, guidance: float | None = None,
                   keep_variance: bool = False):
        """Adapt the network to ``eps(x, t)``, the one function every sampler calls.

        ``cond`` / ``uncond`` are the UNet's conditioning keyword arguments (class labels, or prompt
        states); with both and ``guidance`` != 1, classifier-free guidance between them (Ho &
        Salimans 2022). v-prediction is converted. ``t`` is an integer timestep, or fractional ones,
        one per sample (the score-SDE adapter, diffusion/sde.py). A network that also predicts its
        variance (twice the channels out) has those channels dropped, or kept after eps with
        ``keep_variance`` (for DDPM's learned_range step).
        """
        acp = self.alphas_cumprod
        dtype = next(self.unet.parameters()).dtype
        guided = uncond is not None and guidance is not None and guidance != 1.0
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond} if guided else None

        def net(x, t_vec, kwargs):
            return self.unet(x.to(dtype).contiguous(memory_format=torch.channels_last), t_vec, **kwargs).float()

        def eps(x: torch.Tensor, t) -> torch.Tensor:
            if torch.is_tensor(t):
                t_vec = t.to(x.device, torch.float32)
            else:
                t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            if guided:
                out_c, out_u = net(torch.cat([x, x]), torch.cat([t_vec, t_vec]), both).chunk(2)
                out = out_u + guidance * (out_c - out_u)
            else:
                out = net(x, t_vec, cond)
            out, variance = out.split(x.shape[1], dim=1) if out.shape[1] == 2 * x.shape[1] else (out, None)
            if self.config.prediction_type == "v_prediction":
                if torch.is_tensor(t):  # a_t interpolated between the neighbouring integer timesteps
                    lo = t_vec.floor().long().clamp(0, len(acp) - 2)
                    w = (t_vec - lo).view(-1, *([1] * (x.ndim - 1)))
                    a = (1 - w) * acp.to(x.device, torch.float32)[lo].view_as(w) + w * acp.to(x.device, torch.float32)[lo + 1].view_as(w)
                else:
                    a = float(acp[t])
                out = a ** 0.5 * out + (1 - a) ** 0.5 * x
            return torch.cat([out, variance], dim=1) if keep_variance and variance is not None else out

        return eps

    def eps_fn(self, class_label: torch.Tensor | None = None, guidance: float | None = None, keep_variance: bool = False):
        """``eps(x, t)`` for a class (or none); guidance against the reserved "no label" class."""
        if class_label is None:
            return self.guided_eps({}, keep_variance=keep_variance)
        null = torch.full_like(class_label, self.config.unet.num_classes)
        return self.guided_eps({"class_labels": class_label}, {"class_labels": null}, guidance, keep_variance)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of what the sampler denoises: the image here, a latent for latent diffusion."""
        return self.image_shape

    def shape_for(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """What the sampler denoises for an image of this size (families that take height/width override)."""
        return self.sample_shape

    def conditioned_eps(self, n: int, device, class_label: int | None = None, guidance: float | None = None,
                        keep_variance: bool = False, **_: Any):
        """The ``eps(x, t)`` the samplers call, with this model's conditioning (here: a class) applied."""
        return self.eps_fn(self._labels(class_label, n, device), guidance, keep_variance)

    @property
    def step_variance(self) -> str:
        """DDPM's step variance (``samplers.step_variance``); older configs lack the field."""
        return getattr(self.config, "variance_type", "fixed_small")

    def solver_timesteps(self, steps: int) -> list[int]:
        """The timesteps DPM-Solver++ visits: all above 0, since its last step lands on sigma = 0."""
        c = self.config
        try:
            return solver_timesteps(c.num_train_timesteps, steps, getattr(c, "solver_spacing", None) or c.timestep_spacing, c.steps_offset)
        except ValueError as e:
            raise GmkitError(f"--steps: {e}") from None

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
        if any(_.get(k) is not None for k in ("image", "mask", "strength")):  # img2img / inpainting: editing.py
            return self.edit(noise, sampler=sampler, steps=steps, eta=eta, init=init, class_label=class_label,
                             guidance=guidance, callback=callback, **_)
        device = self.device
        n = len(noise)
        if sampler in sde_samplers.SAMPLERS:  # score-SDE / Karras samplers through the eps -> score adapter
            if eta is not None:
                raise GmkitError("--eta applies to the ddim sampler only")
            return sample_sde(self, self.denoiser(n, class_label, guidance, **_), noise, sampler, steps, init,
                              _.get("schedule"), _.get("snr"), callback)
        if _.get("schedule") is not None or _.get("snr") is not None:
            raise GmkitError(f"--schedule and --snr apply to the score-view samplers ({', '.join(sde_samplers.SAMPLERS)}), not {sampler}")
        steps = steps or (self.config.num_train_timesteps if sampler == "ddpm" else 50)
        ts = self.timesteps(steps)
        shape = self.shape_for(_.get("height"), _.get("width"))
        if init is not None:
            if tuple(init.shape[1:]) != shape:
                raise GmkitError(f"--init holds shape {tuple(init.shape)}, this model needs (N, {', '.join(map(str, shape))})")
            x = init.to(device=device, dtype=torch.float32)
        else:
            x = samplers.randn((n, *shape), noise, device)
        learned = sampler == "ddpm" and self.step_variance == "learned_range"
        eps = self.conditioned_eps(x.shape[0], device, class_label=class_label, guidance=guidance, keep_variance=learned, **_)
        acp = self.alphas_cumprod
        clip = self.config.clip_sample
        if sampler == "ddpm":
            if eta is not None:
                raise GmkitError("--eta applies to the ddim sampler only")
            return samplers.ddpm(eps, x, ts, acp, noise=noise, clip=clip, callback=callback, variance=self.step_variance)
        if sampler == "ddim":
            final = 1.0 if getattr(self.config, "set_alpha_to_one", True) else float(acp[0])
            return samplers.ddim(eps, x, ts, acp, eta=eta or 0.0, noise=noise, clip=clip, callback=callback,
                                 final_alpha=final)
        if sampler == "dpm++2m":
            if eta is not None:
                raise GmkitError("--eta applies to the ddim sampler only")
            return samplers.dpmpp_2m(eps, x, self.solver_timesteps(steps), acp, callback=callback)
        raise GmkitError(f"unknown sampler {sampler!r} for {self.name} (known: {', '.join([*samplers.SAMPLERS, *sde_samplers.SAMPLERS])})")

    @torch.inference_mode()
    def edit(self, noise: list[torch.Generator], image: torch.Tensor | None = None, mask: torch.Tensor | None = None,
             strength: float | None = None, sampler: str = "ddpm", steps: int | None = None, eta: float | None = None,
             resample: int | None = None, jump: int | None = None, init=None, callback=None, **options: Any) -> torch.Tensor:
        """img2img (SDEdit) or, with ``mask`` (1 = generate), inpainting (RePaint): ``diffusion/editing.py``.

        ``image`` (1 or N, *sample_shape) is in the space the sampler denoises (latents for latent
        diffusion). ``strength`` (default 0.6, or 1 with a mask) picks where on the schedule to start.
        """
        from ..diffusion import editing

        if image is None:
            raise GmkitError("--mask and --strength need --image")
        if init is not None:
            raise GmkitError("--init and --image both give the starting point; use one")
        n, device, shape = len(noise), self.device, self.sample_shape
        strength = (1.0 if mask is not None else 0.6) if strength is None else float(strength)
        if not 0 <= strength <= 1:
            raise GmkitError(f"--strength must be between 0 and 1, got {strength}")
        if mask is None and (resample is not None or jump is not None):
            raise GmkitError("--resample and --jump apply to inpainting (with --mask)")
        editors = ("ddpm", "ddim") if mask is not None else ("ddpm", "ddim", "dpm++2m")
        if sampler not in editors:
            raise GmkitError(f"--sampler {sampler}: {'inpainting' if mask is not None else 'img2img'} runs with "
                             f"{', '.join(editors)}")
        if eta is not None and sampler != "ddim":
            raise GmkitError("--eta applies to the ddim sampler only")
        x0 = image.to(device, torch.float32)
        if tuple(x0.shape[1:]) != tuple(shape) or x0.shape[0] not in (1, n):
            raise GmkitError(f"--image: got shape {tuple(x0.shape)}, this model needs (1 or {n}, {', '.join(map(str, shape))})")
        x0 = x0.expand(n, *shape)
        if steps is None:  # RePaint's 250 (Lugmayr et al.) for ancestral inpainting; the samplers' defaults otherwise
            steps = self.config.num_train_timesteps if sampler == "ddpm" else 50
            steps = min(steps, 250) if mask is not None else steps
        full = self.solver_timesteps(steps) if sampler == "dpm++2m" else self.timesteps(steps)
        ts = editing.strength_timesteps(full, strength)
        if not ts:  # strength 0: nothing to do
            return x0.clone()
        acp, clip = self.alphas_cumprod, self.config.clip_sample
        x = samplers.randn((n, *shape), noise, device) if len(ts) == len(full) else editing.add_noise(x0, ts[0], acp, noise)
        learned = sampler == "ddpm" and self.step_variance == "learned_range"
        eps = self.conditioned_eps(n, device, keep_variance=learned, **options)
        if mask is not None:
            m = editing.mask_to(mask.to(device, torch.float32), tuple(shape[-2:])).expand(n, 1, *shape[-2:])
            final = 1.0 if getattr(self.config, "set_alpha_to_one", True) else float(acp[0])
            step = (samplers.ddpm_step(eps, acp, noise, clip, self.step_variance) if sampler == "ddpm"
                    else samplers.ddim_step(eps, acp, eta or 0.0, noise, clip, final))
            for name, v in (("--resample", resample), ("--jump", jump)):
                if v is not None and v < 1:
                    raise GmkitError(f"{name} must be >= 1, got {v}")
            return editing.repaint(step, x, x0, m, ts, acp, noise, jump or 10, resample or 5, callback)
        if sampler == "ddpm":
            return samplers.ddpm(eps, x, ts, acp, noise=noise, clip=clip, callback=callback, variance=self.step_variance)
        if sampler == "ddim":
            return samplers.ddim(eps, x, ts, acp, eta=eta or 0.0, noise=noise, clip=clip, callback=callback)
        return samplers.dpmpp_2m(eps, x, ts, acp, callback=callback)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, steps: int | None = None, class_label: int | None = None,
               refine: int | None = None, callback=None, sampler: str | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """DDIM inversion: the starting noise from which deterministic DDIM regenerates ``x``.

        ``refine`` fixed-point iterations per step (default 2) make it the sampler's exact inverse.
        ``sampler="ode"``: the probability-flow ODE latent instead (Heun, ``sample --sampler heun`` decodes it).
        """
        if sampler == "ode":
            return ode_encode(self, self.denoiser(x.shape[0], class_label), x, sampler, steps, {"refine": refine}, callback)
        if sampler not in (None, "ddim"):
            raise GmkitError(f"--sampler {sampler}: {self.name} encodes with ddim (inversion, the default) or ode")
        ts = self.timesteps(steps or 50)
        x = x.to(self.device, torch.float32)
        eps = self.eps_fn(self._labels(class_label, x.shape[0], x.device))
        return {"noise": samplers.ddim_invert(eps, x, ts, self.alphas_cumprod, refine=2 if refine is None else refine,
                                              callback=callback)}

    # -- the score view (Song et al. 2021): samplers of diffusion/sde_samplers.py, ODE likelihood ----
    def denoiser(self, n: int = 1, class_label: int | None = None, guidance: float | None = None, **options: Any):
        """This eps network as a denoiser D(x, sigma) on DDPM's noise levels (the one eps -> score adapter)."""
        from ..diffusion.sde import ddpm_denoiser

        return ddpm_denoiser(self.conditioned_eps(n, self.device, class_label=class_label, guidance=guidance, **options),
                             self.alphas_cumprod)

    def bits_per_dim(self, x: torch.Tensor, labels=None, steps: int | None = None, batch_size: int = 50,
                     seed: int = 0) -> dict:
        """Held-out bits/dim through the probability-flow ODE (uniform dequantization, Hutchinson trace)."""
        from ..diffusion.ode_likelihood import bits_per_dim

        if self.config.unet.num_classes > 0:
            raise GmkitError(f"bits/dim of a class-conditional {self.name} model is not implemented (it would need --class)")
        return bits_per_dim(self.denoiser(), x.to(self.device), steps or self.likelihood_steps, batch_size, seed)

