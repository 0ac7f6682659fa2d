"""Samplers for score models in the sigma view, each a pure function (k-diffusion style).

Every sampler takes a denoiser ``D(x, sigma) -> x0 estimate`` (``sde.EpsDenoiser`` makes one from
any epsilon network, DDPM's included), the start ``x`` at ``sigmas[0]`` (x = sigma_max * z in
practice), the noise levels to visit (noisiest first, usually ending with 0; see ``sde.karras_sigmas``
and ``sde.geometric_sigmas``), and, for stochastic samplers, ``noise``: one ``torch.Generator`` per
sample (``samplers.randn``), so image i depends on its own seed alone. From the denoiser:

    score(x, sigma) = (D - x) / sigma^2,     d = dx/dsigma = (x - D) / sigma  (the probability-flow ODE)

``callback(i, sigma, x)`` runs after each step.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .samplers import Noise, randn

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], None] | None


def _score(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (denoiser(x, sigma) - x) / sigma ** 2


def _levels(sigmas) -> list[float]:
    return [float(s) for s in sigmas]


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def annealed_langevin(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: Noise = None,
                      steps_per_level: int = 5, step_size: float = 0.2, denoise: bool = True,
                      callback: Callback = None) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of
    the Data Distribution", Algorithm 1).

    At each noise level sigma_i (noisiest first), ``steps_per_level`` Langevin steps
    x <- x + (a_i / 2) score(x, sigma_i) + sqrt(a_i) z with a_i = eps sigma_i^2 / sigma_L^2. Here
    ``step_size`` = eps / sigma_L^2 (so a_i = step_size sigma_i^2; the paper's eps = 2e-5 with
    sigma_L = 0.01 is step_size 0.2). ``denoise`` ends with one Tweedie step x <- D(x, sigma_L)
    (Jolicoeur-Martineau et al. 2021; Song & Ermon 2020, NCSNv2). Zeros in ``sigmas`` are skipped.
    """
    levels = [s for s in _levels(sigmas) if s > 0]
    for i, s in enumerate(levels):
        a = step_size * s ** 2
        for _ in range(steps_per_level):
            x = x + 0.5 * a * _score(denoiser, x, s) + math.sqrt(a) * randn(x.shape, noise, x.device, x.dtype)
        if callback is not None:
            callback(i, s, x)
    return denoiser(x, levels[-1]) if denoise else x


def _reverse_diffusion_step(denoiser: Denoiser, x: torch.Tensor, s: float, s_next: float, noise: Noise) -> torch.Tensor:
    """x <- x + (s^2 - s'^2) score(x, s) + sqrt(s^2 - s'^2) z; noiseless when s' = 0 (then x <- D(x, s))."""
    var = s ** 2 - s_next ** 2
    x = x + var * _score(denoiser, x, s)
    if s_next > 0:
        x = x + math.sqrt(var) * randn(x.shape, noise, x.device, x.dtype)
    return x


def euler_maruyama(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: Noise = None,
                   callback: Callback = None) -> torch.Tensor:
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6), written in sigma:

    dx = -d[sigma^2] score(x, sigma) + sqrt(d[sigma^2]/dt) dw  ->
    x_{i+1} = x_i + (sigma_i^2 - sigma_{i+1}^2) score(x_i, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z,

    the "reverse diffusion" predictor of the VE SDE (eq. 47). The last step, to sigma = 0, adds no
    noise: it is the Tweedie denoising step x <- D(x, sigma).
    """
    s = _levels(sigmas)
    for i in range(len(s) - 1):
        x = _reverse_diffusion_step(denoiser, x, s[i], s[i + 1], noise)
        if callback is not None:
            callback(i, s[i], x)
    return x


def predictor_corrector(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: Noise = None,
                        snr: float = 0.16, corrector_steps: int = 1, callback: Callback = None) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 2 with the reverse-diffusion
    predictor and the Langevin corrector of Algorithm 5, VE form).

    Each step predicts sigma_i -> sigma_{i+1} with ``euler_maruyama``'s step, then runs
    ``corrector_steps`` Langevin steps at sigma_{i+1}: x <- x + e g + sqrt(2 e) z with g the score and
    e = 2 (snr ||z|| / ||g||)^2. The norms are taken per sample (the paper averages over the batch),
    so image i still depends on its own seed alone.
    """
    s = _levels(sigmas)
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


def euler(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], callback: Callback = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma
    (Song et al. 2021, eq. 13; Karras et al. 2022, eq. 3 and Algorithm 1 without the Heun correction).
    On DDPM's discrete sigmas this is exactly DDIM with eta = 0 (Song, Meng & Ermon 2021, sec. 4.3)."""
    s = _levels(sigmas)
    for i in range(len(s) - 1):
        d = (x - denoiser(x, s[i])) / s[i]
        x = x + d * (s[i + 1] - s[i])
        if callback is not None:
            callback(i, s[i], x)
    return x


def heun(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], callback: Callback = None) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 with
    S_churn = 0): an Euler step, then the average of the slopes at both ends; the last step to
    sigma = 0 stays Euler. Two network calls per step (one for the last). Works in either direction:
    increasing ``sigmas`` integrate the ODE forward (images -> latents)."""
    s = _levels(sigmas)
    for i in range(len(s) - 1):
        d = (x - denoiser(x, s[i])) / s[i]
        x_next = x + d * (s[i + 1] - s[i])
        if s[i + 1] != 0:
            d_next = (x_next - denoiser(x_next, s[i + 1])) / s[i + 1]
            x_next = x + 0.5 * (d + d_next) * (s[i + 1] - s[i])
        x = x_next
        if callback is not None:
            callback(i, s[i], x)
    return x


def ancestral_step(s: float, s_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step s -> s' into a deterministic move to sigma_down and fresh noise sigma_up with
    sigma_down^2 + sigma_up^2 = s'^2 (DDPM's posterior variance, as DDIM eq. 16 with eta)."""
    if s_next == 0:
        return 0.0, 0.0
    up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - up ** 2), up


def euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: Noise = None,
                    eta: float = 1.0, callback: Callback = None) -> torch.Tensor:
    """Euler ancestral: an Euler step of the probability-flow ODE down to sigma_down, then fresh noise of
    scale sigma_up (``ancestral_step``): ancestral sampling (Ho et al. 2020, Algorithm 2) in the
    sigma view of Karras et al. 2022, as in k-diffusion's ``sample_euler_ancestral``."""
    s = _levels(sigmas)
    for i in range(len(s) - 1):
        down, up = ancestral_step(s[i], s[i + 1], eta)
        d = (x - denoiser(x, s[i])) / s[i]
        x = x + d * (down - s[i])
        if up > 0:
            x = x + up * randn(x.shape, noise, x.device, x.dtype)
        if callback is not None:
            callback(i, s[i], x)
    return x


SAMPLERS = {"pc": predictor_corrector, "langevin": annealed_langevin, "euler-maruyama": euler_maruyama,
            "euler": euler, "heun": heun, "euler-ancestral": euler_ancestral}
STOCHASTIC = frozenset({"pc", "langevin", "euler-maruyama", "euler-ancestral"})
DEFAULT_STEPS = {"pc": 500, "langevin": 100, "euler-maruyama": 500, "euler": 50, "heun": 18, "euler-ancestral": 50}
# The SDE samplers walk the VE SDE's own geometric noise levels; the ODE and ancestral samplers use
# Karras et al.'s schedule, which spends its steps at low noise.
DEFAULT_SCHEDULE = {"pc": "geometric", "langevin": "geometric", "euler-maruyama": "geometric",
                    "euler": "karras", "heun": "karras", "euler-ancestral": "karras"}


def network_calls(sampler: str, steps: int, corrector_steps: int = 1, steps_per_level: int = 5) -> int:
    """Network evaluations per image for ``steps`` noise levels (schedules end with an extra 0)."""
    return {"pc": steps * (1 + corrector_steps) - corrector_steps, "langevin": steps * steps_per_level + 1,
            "euler-maruyama": steps, "euler": steps, "heun": 2 * steps - 1, "euler-ancestral": steps}[sampler]


def start_scale(sigma_max: float) -> float:
    """x at sigma_max = z * sqrt(1 + sigma_max^2): a unit-variance latent z, in the VP scaling (for DDPM
    exactly x_T / sqrt(a_T)), so ``--init`` files mean the same thing for DDIM and these samplers."""
    return math.sqrt(1 + sigma_max ** 2)


def generate(denoiser, sampler: str, x_unit: torch.Tensor, noise: Noise, steps: int | None = None,
             schedule: str | None = None, snr: float | None = None, callback: Callback = None) -> torch.Tensor:
    """Run ``sampler`` from unit-variance noise (or an ODE latent) ``x_unit`` to images."""
    from .sde import get_sigmas

    steps = steps or DEFAULT_STEPS[sampler]
    sigmas = get_sigmas(schedule or DEFAULT_SCHEDULE[sampler], steps, denoiser.sigma_min, denoiser.sigma_max)
    x = x_unit * start_scale(denoiser.sigma_max)
    fn = SAMPLERS[sampler]
    kwargs = {"noise": noise} if sampler in STOCHASTIC else {}
    if snr is not None:
        kwargs["snr"] = snr
    return fn(denoiser, x, sigmas, callback=callback, **kwargs)


def ode_encode(denoiser, x0: torch.Tensor, steps: int = 18, schedule: str = "karras",
               callback: Callback = None) -> torch.Tensor:
    """Images -> ODE latents: Heun on the probability-flow ODE from sigma_min up to sigma_max (the
    data are taken as the state at sigma_min), returned in ``start_scale`` units so that
    ``generate(..., "heun", z, steps=steps)`` walks the same sigmas back (Song et al. 2021, sec. 4.3)."""
    from .sde import get_sigmas

    sigmas = get_sigmas(schedule, steps, denoiser.sigma_min, denoiser.sigma_max)[:-1].flip(0)  # sigma_min .. sigma_max
    return heun(denoiser, x0, sigmas, callback=callback) / start_scale(denoiser.sigma_max)
