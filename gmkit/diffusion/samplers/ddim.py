"""DDPM's ancestral sampler, DDIM and DDIM inversion, written in alpha-bar form on the state x_t.

Each works on any decreasing noise levels: alpha-bar at a level is ``denoiser.alpha_bar(sigma)``
(1 / (1 + sigma^2); exactly the stored value at the model's own levels) and the network is read
as ``denoiser.eps(x_t, sigma)``. On a model's own levels this is the arithmetic of diffusers'
DDPMScheduler / DDIMScheduler, step for step.
"""

from __future__ import annotations

import math

import torch

from ...errors import GmkitError
from .base import Callback, Noise, levels, predict_x0, randn

STEP_VARIANCES = ("fixed_small", "fixed_large", "learned_range")  # ``step_variance``'s kinds (diffusers' names)


def ddpm(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, clip: bool = False,
         variance: str = "fixed_small", callback: Callback = None) -> torch.Tensor:
    """Ancestral sampling of DDPM (Ho et al. 2020, Algorithm 2), on any subsequence of levels.

    Each step s -> s' draws x_{s'} from the posterior q(x_{s'} | x_s, x_0) (eq. 6-7) with x_0
    predicted from eps, beta recomputed for the gap (Nichol & Dhariwal 2021, section 4), with the
    step variance ``variance`` (``step_variance``; the process's ``variance_type``); no noise on the
    step to sigma = 0. ``clip`` clamps the predicted x_0 to [-1, 1] (pixel models).
    """
    if variance not in STEP_VARIANCES:
        raise ValueError(f"unknown step variance {variance!r} ({', '.join(STEP_VARIANCES)})")
    s = levels(sigmas)
    for i in range(len(s) - 1):
        a_t, a_prev = denoiser.alpha_bar(s[i]), denoiser.alpha_bar(s[i + 1])
        beta = 1 - a_t / a_prev
        if variance == "learned_range":
            e, v = denoiser.eps_and_variance(x, s[i])
            if v is None:
                raise GmkitError("variance_type learned_range: the network predicts no variance "
                                 "(it needs twice the image's channels out)")
        else:
            e, v = denoiser.eps(x, s[i]), None
        x0 = predict_x0(x, e, a_t)
        if clip:
            x0 = x0.clamp(-1, 1)
        x = (a_prev ** 0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
        if s[i + 1] > 0:
            x = x + step_variance(variance, beta, a_t, a_prev, v) ** 0.5 * randn(x.shape, noise, x.device, x.dtype)
        if callback is not None:
            callback(i, s[i], x)
    return x


def step_variance(kind: str, beta: float, a_t: float, a_prev: float, predicted: torch.Tensor | None = None):
    """The variance of DDPM's reverse step t -> t' (Ho et al. 2020, section 3.2):

    fixed_small     the posterior's, beta~ = beta (1 - a_{t'}) / (1 - a_t)   (eq. 7)
    fixed_large     beta itself (what the DDPM CIFAR-10 and LSUN models sampled with)
    learned_range   exp(v log beta + (1 - v) log beta~) with v = (out + 1) / 2 read from the
                    network's extra output channels (Nichol & Dhariwal 2021, eq. 15)
    """
    small = max(beta * (1 - a_prev) / (1 - a_t), 1e-20)
    if kind == "fixed_small":
        return small
    if kind == "fixed_large":
        return beta
    if kind == "learned_range":
        frac = (predicted + 1) / 2
        return torch.exp(frac * math.log(beta) + (1 - frac) * math.log(small))
    raise ValueError(f"unknown step variance {kind!r} ({', '.join(STEP_VARIANCES)})")


def ddim(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, eta: float = 0.0, clip: bool = False,
         callback: Callback = None) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12); eta = 0 deterministic, 1 DDPM's variance. Per step s -> s':

    x_{s'} = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')   (eq. 16).

    With eta = 0 it is Euler's method on the probability-flow ODE in the right variables (sec. 4.3).
    A last level above 0 (alpha-bar_0: Stable Diffusion's ``set_alpha_to_one=False``) ends there.
    """
    s = levels(sigmas)
    for i in range(len(s) - 1):
        a_t, a_prev = denoiser.alpha_bar(s[i]), denoiser.alpha_bar(s[i + 1])
        e = denoiser.eps(x, s[i])
        x0 = predict_x0(x, e, a_t)
        if clip:
            x0 = x0.clamp(-1, 1)
        sd = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x = a_prev ** 0.5 * x0 + max(1 - a_prev - sd ** 2, 0.0) ** 0.5 * e
        if sd > 0:
            x = x + sd * randn(x.shape, noise, x.device, x.dtype)
        if callback is not None:
            callback(i, s[i], x)
    return x


def ddim_invert(denoiser, x0: torch.Tensor, sigmas, refine: int = 0, callback: Callback = None) -> torch.Tensor:
    """Run deterministic DDIM backwards: clean image -> the noise that DDIM (eta=0) maps back to it.

    The ODE view of DDIM (Song et al. 2021, eq. 14) integrated forward in time. Sampling steps
    s -> s' with eps(x_s, s); the plain inversion step s' -> s must guess x_s, and uses
    eps(x_{s'}, s) (first order). ``refine`` fixed-point iterations re-evaluate eps at the new
    x_s, so the step becomes the exact inverse of the sampler's step as they converge
    (Pan et al. 2023, "accelerated iterative diffusion inversion"). Each costs one more network
    call per step. ``sigmas`` are the same noisiest-first levels sampling walks, ending with 0.
    """
    s = levels(sigmas)[::-1]  # cleanest first
    x = x0
    for i in range(1, len(s)):
        a_t, a_prev = denoiser.alpha_bar(s[i]), denoiser.alpha_bar(s[i - 1])
        guess = x
        for _ in range(1 + refine):
            e = denoiser.eps(guess, s[i])
            guess = a_t ** 0.5 * predict_x0(x, e, a_prev) + (1 - a_t) ** 0.5 * e
        x = guess
        if callback is not None:
            callback(i - 1, s[i], x)
    return x
