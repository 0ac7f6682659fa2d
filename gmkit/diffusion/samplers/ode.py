"""Deterministic solvers of the probability-flow ODE (Song et al. 2021, eq. 13), which in the sigma
view x = x0 + sigma z reads dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3).

They take ``noise`` as every sampler does, and draw none.
"""

from __future__ import annotations

import math

import torch

from .base import Callback, Noise, levels, predict_x0, sigma_view


@sigma_view
def euler(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, callback: Callback = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the Heun
    correction). On a model's own discrete levels this is DDIM with eta = 0 (Song, Meng & Ermon
    2021, sec. 4.3)."""
    s = levels(sigmas)
    for i in range(len(s) - 1):
        d = (x - denoiser(x, s[i])) / s[i]
        x = x + d * (s[i + 1] - s[i])
        if callback is not None:
            callback(i, s[i], x)
    return x


@sigma_view
def heun(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, callback: Callback = None) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 with
    S_churn = 0): an Euler step, then the average of the slopes at both ends; the last step to
    sigma = 0 stays Euler. Two network calls per step (one for the last). Works in either direction:
    increasing ``sigmas`` integrate the ODE forward (images -> latents, ``ode_encode``)."""
    s = levels(sigmas)
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


def dpmpp_2m(denoiser, x: torch.Tensor, sigmas, noise: Noise = None, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep solver of the diffusion ODE in data prediction
    (Lu et al. 2022, "DPM-Solver++", Algorithm 2), deterministic; "DPM++ 2M" (and with
    ``karras_sigmas``, "DPM++ 2M Karras") in other tools.

    With alpha = sqrt(a), sigma_t = sqrt(1 - a) (the state's, not the sigma view's), lambda =
    log(alpha / sigma_t) = -log(sigma) and x0_i the data prediction at level i, one step i -> i+1 with
    h = lambda_{i+1} - lambda_i is

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) D_i,
        D_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i),   r_i = h_{i-1} / h_i          (eq. 3.6 / Alg. 2)

    The first step has no history and is first order (D_0 = x0_0, DPM-Solver++(1) = DDIM). A step to
    sigma = 0 lands on x0 itself (first order, "lower order final"), so on a discrete-time model the
    levels should stop above t = 0 (``schedules.solver_timesteps``).
    """
    s = levels(sigmas)
    prev_x0, prev_h = None, None
    for i in range(len(s) - 1):
        a_t = denoiser.alpha_bar(s[i])
        x0 = predict_x0(x, denoiser.eps(x, s[i]), a_t)
        if s[i + 1] == 0:
            x = x0  # lambda -> inf, e^{-h} -> 0
        else:
            a_next = denoiser.alpha_bar(s[i + 1])
            lam_t = 0.5 * math.log(a_t / (1 - a_t))
            lam_next = 0.5 * math.log(a_next / (1 - a_next))
            h = lam_next - lam_t
            d = x0 if prev_x0 is None else x0 + (x0 - prev_x0) * (h / (2 * prev_h))
            x = ((1 - a_next) / (1 - a_t)) ** 0.5 * x - a_next ** 0.5 * math.expm1(-h) * d
            prev_x0, prev_h = x0, h
        if callback is not None:
            callback(i, s[i], x)
    return x


def ode_encode(denoiser, x0: torch.Tensor, sigmas, callback: Callback = None) -> torch.Tensor:
    """Images -> probability-flow ODE latents: Heun from sigma_min up to sigma_max (increasing
    ``sigmas``, the data taken as the sigma-view state at the first), returned in the contract's
    unit-variance scaling, so that ``heun`` walking the same levels down (then to 0) decodes them
    (Song et al. 2021, sec. 4.3)."""
    return heun.__wrapped__(denoiser, x0, sigmas, callback=callback) / math.sqrt(1 + float(sigmas[-1]) ** 2)
