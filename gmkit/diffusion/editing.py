"""Editing existing images with a trained diffusion model, no retraining: img2img and inpainting,
with every sampler, on whatever the sampler denoises (pixels, or an autoencoder's latents).

- img2img (SDEdit, Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
  Differential Equations"): noise the image to the level that ``strength`` picks on the sampler's
  own levels, then denoise from there. strength 0 returns the image, 1 starts from pure noise.
- inpainting, two schemes (the sampler's ``inpaint`` fact says which):
  * ``repaint`` (ddpm, ddim, euler-ancestral, euler-maruyama, pc, langevin), RePaint (Lugmayr et al.
    2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic Models", Algorithm 1): after
    every step the known region is replaced by the image noised afresh to the new level, and the
    last ``jump`` steps are undone (re-noised) and redone ``resample`` times so the generated
    region and the imposed one harmonise. Each step is the sampler itself run on two levels.
  * ``masked`` (the deterministic ODE solvers euler, heun, dpm++2m): the denoiser's estimate is
    replaced by the image in the known region, D'(x, sigma) = m D(x, sigma) + (1 - m) image. The
    known region then follows the exact ODE path of a model whose data is the image, keeping its
    starting noise (a consistent draw of q(x_sigma | image) at every level, as DDIM keeps its
    noise); the generated region is denoised against it. Multistep solvers keep their history and
    nothing random is added, so the result stays a deterministic function of the seed.

Masks here are 1 where the model generates ("fill"), 0 where the image is kept. Either way the
known region of the result is the image exactly.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .samplers import Callback, Noise, randn
from .samplers.base import levels


def strength_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The levels SDEdit walks: the last ``round(strength * N)`` steps of the N-step schedule (plus
    its last level). t0 = strength * T (Meng et al. 2022, section 3.2), taken on the sampler's own
    levels so that ``steps`` keeps its meaning; strength 0 gives no step, 1 the whole schedule."""
    n = len(sigmas) - 1
    return sigmas[n - round(n * strength):]


def repaint_schedule(n: int, jump: int = 10, resample: int = 10) -> list[int]:
    """Positions 0..n in a noisiest-first list of n steps (n = the last level) that RePaint visits.

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


Step = Callable[[torch.Tensor, float, float], torch.Tensor]  # (x at s, s, s') -> x at s'


def repaint(step: Step, process, x: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, sigmas,
            noise: Noise = None, jump: int = 10, resample: int = 10, callback: Callback = None) -> torch.Tensor:
    """Inpainting by RePaint (Lugmayr et al. 2022, Algorithm 1) with any one-step ``step``.

    ``x`` is the start at ``sigmas[0]`` (pure noise, or for SDEdit-style inpainting the noised
    image); ``mask`` is 1 where to generate. After each step down to s',
    x_{s'} = (1 - m) q(x_{s'} | image) + m x_{s'}, and at the last level the image itself; a jump
    up from s' to s draws q(x_s | x_{s'}).
    """
    s = levels(sigmas)
    n = len(s) - 1
    keep = 1 - mask
    path = repaint_schedule(n, jump, resample)
    for i, (p, q) in enumerate(zip(path[:-1], path[1:])):
        if q > p:  # denoise one step, then impose the known region noised to the new level
            x = step(x, s[p], s[q])
            known = image if q == n else process.q_sample(image, process.alpha_bar(s[q]), randn(image.shape, noise, x.device))
            x = keep * known + mask * x
        else:  # jump back up to a noisier level
            x = process.renoise(x, process.alpha_bar(s[p]), process.alpha_bar(s[q]), randn(x.shape, noise, x.device))
        if callback is not None:
            callback(i, s[q], x)
    return x


class MaskedDenoiser:
    """A denoiser whose estimate is ``image`` where ``mask`` is 0 (the ``masked`` scheme above)."""

    def __init__(self, denoiser, image: torch.Tensor, mask: torch.Tensor):
        self.denoiser, self.image, self.mask = denoiser, image, mask
        self.sigma_min, self.sigma_max = denoiser.sigma_min, denoiser.sigma_max

    def alpha_bar(self, sigma):
        return self.denoiser.alpha_bar(sigma)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return (1 - self.mask) * self.image + self.mask * self.denoiser(x, sigma)

    def eps(self, x: torch.Tensor, sigma) -> torch.Tensor:
        a = self.alpha_bar(sigma)
        known = (x - a ** 0.5 * self.image) / (1 - a) ** 0.5  # the noise that puts the image at x
        return (1 - self.mask) * known + self.mask * self.denoiser.eps(x, sigma)


def mask_to(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A 0/1 fill mask (N, 1, H, W) at another resolution; shrinking marks a cell "fill" if any of
    its pixels is (so a latent cell touching the hole is regenerated, never kept half-stale)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if mask.shape[-2] >= size[0] and mask.shape[-1] >= size[1]:
        return (F.adaptive_max_pool2d(mask.float(), size) > 0.5).to(mask.dtype)
    return F.interpolate(mask.float(), size=size, mode="nearest").to(mask.dtype)
