"""Exact log-likelihood of a score model through its probability-flow ODE (Song et al. 2021, sec. 4.3
and appendix D.2; the instantaneous change of variables of Chen et al. 2018, "Neural ODEs").

In the sigma view the ODE is dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma, and along a
trajectory d log p_sigma(x(sigma)) / dsigma = -div f. Integrating from the data at sigma_min up to
sigma_max, where the marginal is N(0, (1 + sigma_max^2) I) (for DDPM exactly x_T ~ N(0, I)):

    log p(x) = log N(x(sigma_max); 0, (1 + sigma_max^2) I) + integral_{sigma_min}^{sigma_max} div f dsigma

The divergence is the Hutchinson-Skilling estimate v^T (dg/dx) v with one Rademacher v per image,
held fixed along the path (FFJORD, Grathwohl et al. 2019), or the exact trace for tiny inputs.

Integration, on geometric sigmas (uniform in log sigma; on the DDPM network they converge faster
than Karras et al.'s rho = 7 schedule, which is also available): x by Heun's method in sigma (Karras et al.,
Algorithm 1; exact for the part of x that grows like sigma), the log-density by the trapezoid rule
in lambda = log sigma, d log p / dlambda = -div g with g = x - D(x, sigma) (for clean pixels div g is
about 1: a constant in lambda, but 1/sigma in sigma, which a trapezoid in sigma overestimates
badly near sigma_min). Both use the same two network calls per step. Heun in lambda alone mis-grows
x and overstates log p by ~0.4 bits/dim on MNIST at 24 steps; this pairing converges fast.
"""

from __future__ import annotations

import math

import torch

from .schedules import SIGMA_SCHEDULES


def _g(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x - denoiser(x, sigma)  # dx/dlog(sigma) = sigma * (x - D) / sigma


def _g_and_div(denoiser, x: torch.Tensor, sigma: float, v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """g(x, sigma) and its divergence per sample: Hutchinson with probe ``v``, or exact when v is None."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        fx = _g(denoiser, x, sigma)
        if v is not None:
            (jv,) = torch.autograd.grad((fx * v).sum(), x)
            div = (jv * v).flatten(1).sum(1)
        else:  # exact trace: one backward pass per dimension
            flat = fx.flatten(1)
            div = torch.zeros(x.shape[0], device=x.device)
            for j in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=j + 1 < flat.shape[1])
                div = div + g.flatten(1)[:, j]
    return fx.detach(), div.detach()


def ode_log_likelihood(denoiser, x: torch.Tensor, steps: int = 32, exact: bool = False,
                       generator: torch.Generator | None = None, schedule: str = "geometric") -> dict[str, torch.Tensor]:
    """log p(x) in nats per sample of the model's density at sigma_min, and the latent x(sigma_max).

    ``steps`` Heun steps (2 network calls + 2 backward passes each); ``exact`` uses the exact trace.
    """
    sigmas = SIGMA_SCHEDULES[schedule](steps + 1, denoiser.sigma_min, denoiser.sigma_max)[:-1].flip(0).tolist()
    x = x.float()
    v = None
    if not exact:  # Rademacher probes, drawn on the CPU so results do not depend on the device
        v = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(x.device, x.dtype)
    logdet = torch.zeros(x.shape[0], device=x.device)
    g, div = _g_and_div(denoiser, x, sigmas[0], v)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x_euler = x + (s_next - s) * g / s  # dx/dsigma = g / sigma
        g_next, div_next = _g_and_div(denoiser, x_euler, s_next, v)
        x = x + 0.5 * (s_next - s) * (g / s + g_next / s_next)
        logdet = logdet + 0.5 * math.log(s_next / s) * (div + div_next)
        if s_next != sigmas[-1]:
            g, div = _g_and_div(denoiser, x, s_next, v)
    var = 1 + sigmas[-1] ** 2
    dims = x[0].numel()
    prior = -0.5 * (x.flatten(1).pow(2).sum(1) / var + dims * math.log(2 * math.pi * var))
    return {"log_px": prior + logdet, "prior": prior, "z": x}


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images on the 8-bit grid in [-1, 1] (x = v / 127.5 - 1) -> a uniform draw inside each pixel's
    bin of width 2/256: y = 2 (v + u) / 256 - 1, u ~ U[0, 1) (Theis et al. 2016)."""
    v = ((x.float() + 1) * 127.5).round().clamp(0, 255)
    u = torch.rand(x.shape, generator=generator).to(x.device)
    return 2 * (v + u) / 256 - 1


def bits_per_dim(denoiser, x: torch.Tensor, steps: int = 32, batch_size: int = 50, seed: int = 0,
                 exact: bool = False, schedule: str = "geometric") -> dict[str, float]:
    """Mean bits/dim of 8-bit images: -(log p(y) + D log(2/256)) / (D ln 2) with y dequantized; an
    upper bound on the discrete model's bits/dim (the dequantization bound), estimated unbiasedly."""
    g = torch.Generator().manual_seed(seed)
    dims = x[0].numel()
    nll = []
    for s in range(0, x.shape[0], batch_size):
        y = dequantize(x[s:s + batch_size], g)
        lp = ode_log_likelihood(denoiser, y, steps=steps, exact=exact, generator=g, schedule=schedule)["log_px"].cpu()
        nll.append(-(lp + dims * math.log(2 / 256)))
    nll = torch.cat(nll)
    bpd = nll / (dims * math.log(2))
    return {"bpd": float(bpd.mean()), "bpd_std_err": float(bpd.std() / max(len(bpd), 2) ** 0.5) if len(bpd) > 1 else 0.0,
            "images": int(x.shape[0]), "ode_steps": steps, "ode_schedule": schedule, "network_calls_per_image": 2 * steps,
            "trace": "exact" if exact else "hutchinson (one Rademacher probe per image)"}
