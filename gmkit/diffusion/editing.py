"""Editing existing images with a trained diffusion model, no retraining: img2img and inpainting.

Both work on whatever the sampler denoises (pixels, or an autoencoder's latents) and take the same
``eps(x, t)``, noisiest-first ``timesteps`` and ``alphas_cumprod`` as the samplers in ``samplers.py``.

- img2img (SDEdit, Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
  Differential Equations"): noise the image to the level t0 that ``strength`` picks, then denoise
  from there with any sampler. strength 0 returns the image, 1 starts from pure noise.
- inpainting (RePaint, Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion
  Probabilistic Models"): at every step the known region is replaced by the image noised to the
  same level, and the last ``jump`` steps are undone and redone ``resample`` times so the generated
  region and the imposed one harmonise.

Masks here are 1 where the model generates ("fill"), 0 where the image is kept.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .samplers import Callback, Noise, StepFn, _alpha, randn


def strength_timesteps(timesteps: Sequence[int], strength: float) -> list[int]:
    """The steps SDEdit runs: the last ``round(strength * N)`` of the N noisiest-first timesteps.

    t0 = strength * T (Meng et al. 2022, section 3.2), taken on the sampler's own schedule so that
    ``steps`` keeps its meaning; strength 0 gives no step, 1 the whole schedule.
    """
    ts = list(timesteps)
    k = round(len(ts) * strength)
    return ts[len(ts) - k:]


def add_noise(x0: torch.Tensor, t: int, alphas_cumprod: torch.Tensor, noise: Noise) -> torch.Tensor:
    """A draw of q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)   (Ho et al. 2020, eq. 4); t = -1 is x_0."""
    a = _alpha(alphas_cumprod, t)
    if t < 0:
        return x0
    return a ** 0.5 * x0 + (1 - a) ** 0.5 * randn(x0.shape, noise, x0.device, x0.dtype)


def renoise(x: torch.Tensor, t: int, t_next: int, alphas_cumprod: torch.Tensor, noise: Noise) -> torch.Tensor:
    """Forward jump from t to a noisier t_next: q(x_{t_next} | x_t) = N(sqrt(a'/a) x_t, (1 - a'/a) I),
    a = a_t, a' = a_{t_next} (the forward chain composed; RePaint section 4.2, eq. 8 for one step)."""
    ratio = _alpha(alphas_cumprod, t_next) / _alpha(alphas_cumprod, t)
    return ratio ** 0.5 * x + (1 - ratio) ** 0.5 * randn(x.shape, noise, x.device, x.dtype)


def repaint_schedule(n: int, jump: int = 10, resample: int = 10) -> list[int]:
    """Positions 0..n in a noisiest-first list of n timesteps (n = clean) that RePaint visits.

    Down ``jump`` positions, then back up ``jump`` and down again, ``resample - 1`` times, block after
    block (Lugmayr et al. 2022, section 4.2, "resampling" with jump length j and r resamplings).
    With resample=1 it is the plain schedule 0, 1, ..., n.
    """
    jump, resample = max(1, jump), max(1, resample)
    path = [0]
    p = 0
    while p < n:
        top = p
        end = min(p + jump, n)
        for r in range(resample):
            path += list(range(p + 1, end + 1))
            p = end
            if r + 1 < resample and end < n:  # the last block ends at the clean image: nothing to redo
                path += [top]
                p = top
            elif r + 1 < resample:
                break
    return path


def repaint(step: StepFn, x: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, timesteps: Sequence[int],
            alphas_cumprod: torch.Tensor, noise: Noise = None, jump: int = 10, resample: int = 10,
            callback: Callback = None) -> torch.Tensor:
    """Inpainting by RePaint (Lugmayr et al. 2022, Algorithm 1) with any one-step denoiser ``step``.

    ``x`` is the start at ``timesteps[0]`` (pure noise, or for SDEdit-style inpainting the noised
    image); ``mask`` is 1 where to generate. After each step down to t',
    x_{t'} = m_known * q(x_{t'} | image) + (1 - m_known) * x_{t'}, so the known region ends exactly
    equal to ``image``; a jump up from t' to t draws q(x_t | x_{t'}).
    """
    ts = list(timesteps) + [-1]  # position len(timesteps) is the clean image
    keep = 1 - mask
    path = repaint_schedule(len(timesteps), jump, resample)
    for i, (a, b) in enumerate(zip(path[:-1], path[1:])):
        if b > a:  # denoise one step, then impose the known region noised to the new level
            x = step(x, ts[a], ts[b])
            x = keep * add_noise(image, ts[b], alphas_cumprod, noise) + mask * x
        else:  # jump back up to a noisier level
            x = renoise(x, ts[a], ts[b], alphas_cumprod, noise)
        if callback is not None:
            callback(i, ts[b], x)
    return x


def mask_to(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A 0/1 fill mask (N, 1, H, W) at another resolution; shrinking marks a cell "fill" if any of
    its pixels is (so a latent cell touching the hole is regenerated, never kept half-stale)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if mask.shape[-2] >= size[0] and mask.shape[-1] >= size[1]:
        return (F.adaptive_max_pool2d(mask.float(), size) > 0.5).to(mask.dtype)
    return F.interpolate(mask.float(), size=size, mode="nearest").to(mask.dtype)
