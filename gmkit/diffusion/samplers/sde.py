"""Stochastic samplers in the sigma view x = x0 + sigma z (k-diffusion style), from the denoiser:

    score(x, sigma) = (D(x, sigma) - x) / sigma^2        (Tweedie's formula)

Fresh noise comes from ``noise`` (one generator per image), so image i depends on its own seed alone.
"""

from __future__ import annotations

import math

import torch

from .base import Callback, Noise, levels, randn, sigma_view


def _score(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (denoiser(x, sigma) - x) / sigma ** 2


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def ancestral_step(s: float, s_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step s -> s' into a deterministic move to sigma_down and fresh noise sigma_up with
    sigma_down^2 + sigma_up^2 = s'^2 (DDPM's posterior variance, as DDIM eq. 16 with eta)."""
    if s_next == 0:
        return 0.0, 0.0
    up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - up ** 2), up


@sigma_view
def euler_ancestral(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, eta: float = 1.0,
                    callback: Callback = None) -> torch.Tensor:
    """Euler ancestral: an Euler step of the probability-flow ODE down to sigma_down, then fresh noise of
    scale sigma_up (``ancestral_step``): ancestral sampling (Ho et al. 2020, Algorithm 2) in the
    sigma view of Karras et al. 2022, as k-diffusion's ``sample_euler_ancestral``; eta = 0 is Euler."""
    s = levels(sigmas)
    for i in range(len(s) - 1):
        down, up = ancestral_step(s[i], s[i + 1], eta)
        d = (x - denoiser(x, s[i])) / s[i]
        x = x + d * (down - s[i])
        if up > 0:
            x = x + up * randn(x.shape, noise, x.device, x.dtype)
        if callback is not None:
            callback(i, s[i], x)
    return x


def _reverse_diffusion_step(denoiser, x: torch.Tensor, s: float, s_next: float, noise: Noise) -> torch.Tensor:
    """x <- x + (s^2 - s'^2) score(x, s) + sqrt(s^2 - s'^2) z; noiseless when s' = 0 (then x <- D(x, s))."""
    var = s ** 2 - s_next ** 2
    x = x + var * _score(denoiser, x, s)
    if s_next > 0:
        x = x + math.sqrt(var) * randn(x.shape, noise, x.device, x.dtype)
    return x


@sigma_view
def euler_maruyama(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, callback: Callback = None) -> torch.Tensor:
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6), written in sigma:

    x_{i+1} = x_i + (sigma_i^2 - sigma_{i+1}^2) score(x_i, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z,

    the "reverse diffusion" predictor of the VE SDE (eq. 47). The last step, to sigma = 0, adds no
    noise: it is the Tweedie denoising step x <- D(x, sigma).
    """
    s = levels(sigmas)
    for i in range(len(s) - 1):
        x = _reverse_diffusion_step(denoiser, x, s[i], s[i + 1], noise)
        if callback is not None:
            callback(i, s[i], x)
    return x


@sigma_view
def predictor_corrector(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, snr: float = 0.16,
                        corrector_steps: int = 1, callback: Callback = None) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 2 with the reverse-diffusion
    predictor and the Langevin corrector of Algorithm 5, VE form).

    Each step predicts sigma_i -> sigma_{i+1} with ``euler_maruyama``'s step, then runs
    ``corrector_steps`` Langevin steps at sigma_{i+1}: x <- x + e g + sqrt(2 e) z with g the score and
    e = 2 (snr ||z|| / ||g||)^2. The norms are taken per sample (the paper averages over the batch),
    so image i still depends on its own seed alone.
    """
    s = levels(sigmas)
    for i in range(len(s) - 1):
        x = _reverse_diffusion_step(denoiser, x, s[i], s[i + 1], noise)
        if s[i + 1] > 0:
            for _ in range(corrector_steps):
                g = _score(denoiser, x, s[i + 1])
                z = randn(x.shape, noise, x.device, x.dtype)
                e = 2 * (snr * _per_sample_norm(z) / _per_sample_norm(g).clamp_min(1e-12)) ** 2
                x = x + e * g + (2 * e).sqrt() * z
        if callback is not None:
            callback(i, s[i], x)
    return x


@sigma_view
def annealed_langevin(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, steps_per_level: int = 5,
                      step_size: float = 0.2, callback: Callback = None) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of
    the Data Distribution", Algorithm 1).

    Step i runs ``steps_per_level`` Langevin steps at sigma_i, x <- x + (a_i / 2) score(x, sigma_i) +
    sqrt(a_i) z with a_i = eps sigma_i^2 / sigma_L^2, and hands the result on to the next level. Here
    ``step_size`` = eps / sigma_L^2 (so a_i = step_size sigma_i^2; the paper's eps = 2e-5 with
    sigma_L = 0.01 is step_size 0.2). The step to sigma = 0 ends with one Tweedie step
    x <- D(x, sigma_L) (Jolicoeur-Martineau et al. 2021; Song & Ermon 2020, NCSNv2).
    """
    s = levels(sigmas)
    for i in range(len(s) - 1):
        a = step_size * s[i] ** 2
        for _ in range(steps_per_level):
            x = x + 0.5 * a * _score(denoiser, x, s[i]) + math.sqrt(a) * randn(x.shape, noise, x.device, x.dtype)
        if s[i + 1] == 0:
            x = denoiser(x, s[i])
        if callback is not None:
            callback(i, s[i], x)
    return x
