"""Score SDEs in the noise-level ("sigma") view, noise schedules for them, and the one adapter that
turns any epsilon-predicting network into a denoiser.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations":
the variance-exploding SDE (VE, NCSN) perturbs data as ``x = x0 + sigma(t) z``; the
variance-preserving SDE (VP, DDPM in continuous time) as ``x_t = sqrt(a(t)) x0 + sqrt(1 - a(t)) z``.
Karras et al. (2022, "Elucidating the Design Space of Diffusion-Based Generative Models", sec. 2-4)
observe that ``x_t / sqrt(a(t)) = x0 + sigma z`` with ``sigma = sqrt((1 - a) / a)``: every such
process is the VE process in disguise, so one set of samplers, written in sigma, serves all. The
samplers (``sde_samplers.py``) see only a *denoiser* ``D(x, sigma) -> E[x0 | x]``, from which

    score(x, sigma) = (D(x, sigma) - x) / sigma^2 = -eps / sigma          (Tweedie's formula)

A model is "an epsilon network plus two functions of sigma": the input scale ``c_in(sigma)`` and the
conditioning value ``c_noise(sigma)`` (a fractional timestep). ``EpsDenoiser`` is that adapter.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# -- noise processes ----------------------------------------------------------------------------


class VESDE:
    """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1]
    (Song et al. 2021, eq. 30; the noise levels of NCSN, Song & Ermon 2019, made continuous)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class VPSDE:
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1],
    a(t) = exp(-t beta_min - t^2 (beta_max - beta_min) / 2) (Song et al. 2021, eq. 32-33), so
    sigma(t) = sqrt(1 / a(t) - 1). The continuous limit of DDPM's linear schedule."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.sigma_min = float(self.sigma(torch.tensor(t_min, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(t * self.beta_min + 0.5 * t ** 2 * (self.beta_max - self.beta_min)))

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        # Solve beta_min t + (beta_max - beta_min) t^2 / 2 = log(1 + sigma^2) for t >= 0.
        b0, db = self.beta_min, self.beta_max - self.beta_min
        c = torch.log1p(sigma.double() ** 2)
        return ((torch.sqrt(b0 ** 2 + 2 * db * c) - b0) / db).to(sigma.dtype)


def make_sde(name: str, sigma_min: float, sigma_max: float, beta_min: float, beta_max: float):
    if name == "ve":
        return VESDE(sigma_min, sigma_max)
    if name == "vp":
        return VPSDE(beta_min, beta_max)
    raise ValueError(f"unknown sde {name!r} (vp or ve)")


class DiscreteSigmas:
    """DDPM's 1000 discrete noise levels in the sigma view: sigma_t = sqrt((1 - a_t) / a_t), and
    fractional timesteps between them by interpolating log sigma (as k-diffusion does)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().double()
        self.log_sigmas = self.sigmas.log()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose interpolated log sigma is log(sigma), clamped to [0, T-1]."""
        ls = self.log_sigmas.to(sigma.device)
        log_s = sigma.double().clamp(self.sigma_min, self.sigma_max).log()
        hi = torch.searchsorted(ls, log_s).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return (lo + w).to(sigma.dtype)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        lo = t.floor().long().clamp(0, len(self.sigmas) - 2)
        w = t.double() - lo
        ls = self.log_sigmas.to(t.device)
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp().to(t.dtype)


# -- the adapter --------------------------------------------------------------------------------

EpsNet = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scaled x, fractional timesteps (N,)) -> eps


class EpsDenoiser:
    """Any epsilon-predicting network as a denoiser ``D(x, sigma)`` on x = x0 + sigma z.

    ``eps_net(c_in x, c_noise) -> eps`` with ``c_in = 1 / sqrt(1 + sigma^2)`` (for DDPM this is
    sqrt(a_t): the network sees the VP-scaled input it was trained on) and ``c_noise = t_of_sigma(sigma)``.
    Then ``D = x - sigma eps`` and ``score = -eps / sigma`` (Karras et al. 2022, table 1, "VP" and
    "VE" preconditioning; k-diffusion's ``DiscreteEpsDDPMDenoiser``). ``sigma`` is a float or a
    tensor of one value per sample.
    """

    def __init__(self, eps_net: EpsNet, t_of_sigma: Callable[[torch.Tensor], torch.Tensor],
                 sigma_min: float, sigma_max: float):
        self.eps_net, self.t_of_sigma = eps_net, t_of_sigma
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def _sig(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        return s.expand(x.shape[0]) if s.ndim == 0 else s

    def eps(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = self._sig(x, sigma)
        c_in = (1 + s ** 2).rsqrt().view(-1, *([1] * (x.ndim - 1)))
        return self.eps_net(x * c_in, self.t_of_sigma(s)).float()

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = self._sig(x, sigma).view(-1, *([1] * (x.ndim - 1)))
        return x - s * self.eps(x, sigma)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = self._sig(x, sigma).view(-1, *([1] * (x.ndim - 1)))
        return -self.eps(x, sigma) / s


# -- sigma schedules (noisiest first, ending with 0 unless said otherwise) --------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max to sigma_min, evenly spaced in sigma^(1/rho), then 0
    (Karras et al. 2022, eq. 5; rho = 7)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([s, s.new_zeros(1)])


def geometric_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n noise levels in geometric progression from sigma_max to sigma_min, then 0
    (NCSN, Song & Ermon 2019, sec. 4.2; the VE SDE's own discretisation, Song et al. 2021 eq. 9)."""
    s = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))
    return torch.cat([s, s.new_zeros(1)])


SCHEDULES = {"karras": karras_sigmas, "geometric": geometric_sigmas}


def get_sigmas(schedule: str, n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown sigma schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    return SCHEDULES[schedule](n, sigma_min, sigma_max)


# -- training: denoising score matching ----------------------------------------------------------


def dsm_loss(eps_net: EpsNet, sde, x0: torch.Tensor, t_min: float = 0.0) -> torch.Tensor:
    """Denoising score matching (Vincent 2011) with the weighting lambda(sigma) = sigma^2 of
    Song et al. 2021 (eq. 7) and Song & Ermon 2019 (eq. 6): with x = x0 + sigma z,

        sigma^2 || s(x, sigma) + z / sigma ||^2 = || eps(x, sigma) - z ||^2,

    t ~ U(t_min, 1) so sigma follows the SDE's own noise distribution (log-uniform for VE)."""
    b = x0.shape[0]
    t = t_min + (1 - t_min) * torch.rand(b, device=x0.device)
    sigma = sde.sigma(t).float().view(b, *([1] * (x0.ndim - 1)))
    z = torch.randn_like(x0)
    x = (x0 + sigma * z) * (1 + sigma ** 2).rsqrt()  # the network's input, as EpsDenoiser scales it
    pred = eps_net(x, c_noise(sde, t))
    return (pred.float() - z).pow(2).mean()


def c_noise(sde, t: torch.Tensor) -> torch.Tensor:
    """The network's noise conditioning: the SDE time t in [0, 1] as a fractional timestep in
    [0, 999], the range the UNet's sinusoidal embedding was designed for (Song et al. 2021 do the same)."""
    return 999.0 * t


def ddpm_denoiser(eps_fn: Callable, alphas_cumprod: torch.Tensor) -> EpsDenoiser:
    """A discrete-time DDPM epsilon model ``eps_fn(x_t, t)`` (t: fractional timesteps, one per sample)
    as a denoiser on DDPM's own noise levels sigma_t = sqrt((1 - a_t) / a_t), t = 0..T-1."""
    disc = DiscreteSigmas(alphas_cumprod)
    return EpsDenoiser(eps_fn, disc.t, disc.sigma_min, disc.sigma_max)


def sde_denoiser(eps_fn: Callable, sde) -> EpsDenoiser:
    """A network trained by ``dsm_loss`` on ``sde`` as a denoiser on [sde.sigma_min, sde.sigma_max]."""
    return EpsDenoiser(eps_fn, lambda s: c_noise(sde, sde.t(s)), sde.sigma_min, sde.sigma_max)
