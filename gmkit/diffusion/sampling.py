"""From sample options to a sampler run, for every diffusion family: check the options (errors name
the setting), pick the levels (sampler x schedule x steps), start from noise, ``init``, or an
image to edit, call the sampler. Also the inverse direction (``encode``) and the network adapter
that applies conditioning and classifier-free guidance.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import OptionError
from . import editing
from .process import Denoiser, DiffusionProcess, Net
from .samplers import SAMPLERS, Callback, Sampler, ddim_invert, default_steps, ode_encode, randn
from .schedules import SCHEDULES, karras_sigmas

# The sample options ``sample`` takes (families add their conditioning: class, prompt, ...).
SAMPLING_OPTIONS = frozenset({"sampler", "steps", "eta", "init", "schedule", "snr",
                              "image", "mask", "strength", "resample", "jump"})
INPAINT_STEPS = 250  # RePaint's (Lugmayr et al.), the cap on a sampler's default steps when inpainting


def unet_network(unet: torch.nn.Module, cond: dict | None = None, uncond: dict | None = None,
                 guidance: float | None = None, concat: torch.Tensor | None = None) -> Net:
    """A UNet as ``net(x_t, c_noise)``: ``cond`` are its conditioning keyword arguments (class labels,
    prompt states); with ``uncond`` and ``guidance`` != 1, classifier-free guidance between them (Ho &
    Salimans 2022) on the raw output; ``concat`` is joined to x on the channels (SR3's low-res image)."""
    dtype = next(unet.parameters()).dtype
    cond = cond or {}
    guided = uncond is not None and guidance is not None and guidance != 1.0
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond} if guided else None

    def call(x, t, kwargs):
        if concat is not None:
            c = concat if concat.shape[0] == x.shape[0] else concat.repeat(x.shape[0] // concat.shape[0], 1, 1, 1)
            x = torch.cat([x, c.to(x.dtype)], 1)
        return unet(x.to(dtype).contiguous(memory_format=torch.channels_last), t, **kwargs).float()

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return call(x, t, cond)
        out_c, out_u = call(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return out_u + guidance * (out_c - out_u)

    return net


def plan(process: DiffusionProcess, sampler: str, steps: int | None = None, schedule: str | None = None,
         eta: float | None = None, snr: float | None = None, inpainting: bool = False) -> tuple[Sampler, torch.Tensor, dict]:
    """The sampler, its levels and its keyword arguments, the options checked."""
    if steps is not None and steps < 1:
        raise OptionError("steps", f"must be >= 1, got {steps}")
    _, steps, _ = plan_summary(process, sampler, steps, inpainting)
    info = SAMPLERS[sampler]
    for name, value in (("eta", eta), ("snr", snr)):
        if value is not None and name not in info.params:
            takers = [k for k, v in SAMPLERS.items() if name in v.params]
            raise OptionError(name, f"applies to the {' and '.join(takers)} sampler{'s' if len(takers) > 1 else ''}, not {sampler}")
    if eta is not None and not 0 <= eta <= 1:
        raise OptionError("eta", f"must be between 0 and 1, got {eta}")
    if snr is not None and not snr > 0:
        raise OptionError("snr", f"must be > 0, got {snr}")
    if schedule is not None and schedule not in SCHEDULES:
        raise OptionError("schedule", f"must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    try:
        sigmas = process.sigmas(schedule or info.default_schedule, steps, info.solver_timesteps, info.set_alpha_to_one)
    except ValueError as e:
        raise OptionError("steps", str(e)) from None
    kwargs = {k: v for k, v in (("eta", eta), ("snr", snr)) if v is not None}
    if "clip" in info.params:
        kwargs["clip"] = process.clip_sample
    if "variance" in info.params:
        kwargs["variance"] = process.variance_type
    return info, sigmas, kwargs


def plan_summary(process: DiffusionProcess, sampler: str, steps: int | None = None,
                 inpainting: bool = False) -> tuple[str, int, int]:
    """(sampler, steps, network calls per image) that a run with these options makes; the default
    steps are the sampler's (capped at RePaint's 250 when it inpaints that way)."""
    if sampler not in SAMPLERS:
        raise OptionError("sampler", f"{sampler!r} is unknown (known: {', '.join(SAMPLERS)})")
    info = SAMPLERS[sampler]
    if not steps:
        steps = default_steps(sampler, process.levels.num_levels)
        steps = min(steps, INPAINT_STEPS) if inpainting and info.inpaint == "repaint" else steps
    return sampler, steps, info.calls(steps)


def sample(process: DiffusionProcess, denoiser: Denoiser, noise: list[torch.Generator], shape: tuple[int, ...],
           device, sampler: str, steps: int | None = None, schedule: str | None = None, eta: float | None = None,
           snr: float | None = None, init: torch.Tensor | None = None, image: torch.Tensor | None = None,
           mask: torch.Tensor | None = None, strength: float | None = None, resample: int | None = None,
           jump: int | None = None, callback: Callback = None, **_: Any) -> torch.Tensor:
    """Samples of ``shape`` (what the sampler denoises: images, or latents) from ``denoiser``, one per
    generator; with ``image`` (1 or N, *shape), img2img (``strength``) or inpainting (``mask``, 1 = fill)."""
    n, shape = len(noise), tuple(shape)
    if image is None:
        for name, v in (("mask", mask), ("strength", strength), ("resample", resample), ("jump", jump)):
            if v is not None:
                raise OptionError(name, f"{{{name}}} edits an image: add {{image}}")
    info, sigmas, kwargs = plan(process, sampler, steps, schedule, eta, snr, inpainting=mask is not None)
    if init is not None:
        if image is not None:
            raise OptionError("init", "{init} and {image} both give the starting point; use one")
        if tuple(init.shape[1:]) != shape:
            raise OptionError("init", f"holds shape {tuple(init.shape)}, this model needs (N, {', '.join(map(str, shape))})")
        return info.fn(denoiser, init.to(device, torch.float32), sigmas, noise=noise, callback=callback, **kwargs)
    if image is None:
        return info.fn(denoiser, randn((n, *shape), noise, device), sigmas, noise=noise, callback=callback, **kwargs)

    # -- editing: diffusion/editing.py ------------------------------------------------------------
    strength = (1.0 if mask is not None else 0.6) if strength is None else float(strength)
    if not 0 <= strength <= 1:
        raise OptionError("strength", f"must be between 0 and 1, got {strength}")
    if (resample is not None or jump is not None) and (mask is None or info.inpaint != "repaint"):
        name = "resample" if resample is not None else "jump"
        raise OptionError(name, f"{{{name}}} applies to RePaint inpainting ({{mask}} with the "
                                + ", ".join(k for k, v in SAMPLERS.items() if v.inpaint == "repaint") + " samplers)")
    for name, v in (("resample", resample), ("jump", jump)):
        if v is not None and v < 1:
            raise OptionError(name, f"must be >= 1, got {v}")
    x0 = image.to(device, torch.float32)
    if tuple(x0.shape[1:]) != shape or x0.shape[0] not in (1, n):
        raise OptionError("image", f"has shape {tuple(x0.shape)}, this model needs (1 or {n}, {', '.join(map(str, shape))})")
    x0 = x0.expand(n, *shape)
    tail = editing.strength_sigmas(sigmas, strength)
    if len(tail) < 2:  # strength 0: nothing to do
        return x0.clone()
    if len(tail) == len(sigmas):
        x = randn((n, *shape), noise, device)
    else:
        x = process.q_sample(x0, process.alpha_bar(float(tail[0])), randn(x0.shape, noise, device))
    if mask is None:
        return info.fn(denoiser, x, tail, noise=noise, callback=callback, **kwargs)
    m = editing.mask_to(mask.to(device, torch.float32), shape[-2:]).expand(n, 1, *shape[-2:])
    if info.inpaint == "masked":
        out = info.fn(editing.MaskedDenoiser(denoiser, x0, m), x, tail, noise=noise, callback=callback, **kwargs)
        return (1 - m) * x0 + m * out

    def step(x, s, s_next):
        return info.fn(denoiser, x, [s, s_next], noise=noise, **kwargs)

    return editing.repaint(step, process, x, x0, m, tail, noise, jump or 10, resample or 5, callback)


def encode(process: DiffusionProcess, denoiser: Denoiser, x: torch.Tensor, sampler: str | None = None,
           steps: int | None = None, refine: int | None = None, callback: Callback = None,
           ode_only: bool = False) -> dict[str, torch.Tensor]:
    """Images (or latents) -> the noise a deterministic sampler maps back to them.

    ``ddim`` (the default where allowed): DDIM inversion on the model's own levels, ``refine``
    fixed-point iterations per step (default 2) making it the sampler's exact inverse (``sample
    --sampler ddim`` decodes it). ``ode``: the probability-flow ODE latent by Heun on Karras
    levels (``sample --sampler heun`` with the same steps decodes it)."""
    sampler = sampler or ("ode" if ode_only else "ddim")
    allowed = ("ode",) if ode_only else ("ddim", "ode")
    if sampler not in allowed:
        raise OptionError("sampler", f"{sampler!r}: this model encodes with {' or '.join(allowed)}")
    if sampler == "ode" and refine is not None:
        raise OptionError("refine", "{refine} applies to DDIM inversion ({sampler} ddim), not the ODE")
    if steps is not None and steps < 1:
        raise OptionError("steps", f"must be >= 1, got {steps}")
    if sampler == "ode":
        sigmas = karras_sigmas(steps or SAMPLERS["heun"].default_steps, process.sigma_min, process.sigma_max)
        return {"noise": ode_encode(denoiser, x, sigmas[:-1].flip(0), callback=callback)}
    try:
        sigmas = process.sigmas("discrete", steps or SAMPLERS["ddim"].default_steps)
    except ValueError as e:
        raise OptionError("steps", str(e)) from None
    return {"noise": ddim_invert(denoiser, x, sigmas, refine=2 if refine is None else refine, callback=callback)}
