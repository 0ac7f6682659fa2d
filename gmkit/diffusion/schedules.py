"""Noise schedules: the betas of the forward process, the timesteps a sampler visits on a
discrete-time model, and sigma schedules (noise levels) that any sampler can walk.

Sigma schedules return noise levels noisiest first, ending with 0 (the clean image): ``n`` levels
between ``sigma_min`` and ``sigma_max`` and then 0. The model's own discrete levels (its training
timesteps, spaced as its scheduler config says) come from ``DiffusionProcess.sigmas``, which calls
``sampling_timesteps`` / ``solver_timesteps`` here.
"""

from __future__ import annotations

import math

import torch


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Betas rising linearly (DDPM, Ho et al. 2020, section 4)."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Betas linear in their square root (Latent Diffusion / Stable Diffusion)."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas from a squared-cosine alpha-bar (Nichol & Dhariwal 2021, eq. 17)."""
    f = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)], dtype=torch.float64)


BETA_SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "squaredcos_cap_v2": cosine_betas,
                  "cosine": cosine_betas}


def make_betas(name: str, num_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r} (known: {', '.join(BETA_SCHEDULES)})")
    if name in ("cosine", "squaredcos_cap_v2"):
        return cosine_betas(num_steps)
    return BETA_SCHEDULES[name](num_steps, beta_start, beta_end)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha-bar_t = prod_{s<=t} (1 - beta_s): the signal fraction left at step t."""
    return torch.cumprod(1.0 - betas, dim=0)


# -- the training timesteps a discrete-time model's sampler visits ----------------------------------


def sampling_timesteps(num_train_steps: int, num_steps: int, spacing: str = "trailing", offset: int = 0) -> list[int]:
    """The training timesteps a sampler visits, from noisiest to cleanest.

    ``leading``: 0, k, 2k, ... (+offset) as in DDIM's reference code; ``trailing``: ends at T-1, so
    sampling starts from pure noise (Lin et al. 2024 recommend it); ``linspace``: evenly rounded.
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"must be between 1 and {num_train_steps} for this model, got {num_steps}")
    T, S = num_train_steps, num_steps
    if spacing == "leading":
        ts = [i * (T // S) + offset for i in range(S)]
    elif spacing == "trailing":
        ts = [round(T - i * T / S) - 1 for i in range(S)][::-1]
    elif spacing == "linspace":
        ts = [round(x) for x in torch.linspace(0, T - 1, S, dtype=torch.float64).tolist()]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r} (leading, trailing, linspace)")
    return sorted({min(max(t, 0), T - 1) for t in ts}, reverse=True)


def solver_timesteps(num_train_steps: int, num_steps: int, spacing: str = "linspace", offset: int = 0) -> list[int]:
    """Timesteps for an ODE solver that ends at sigma = 0 (DPM-Solver++): ``num_steps`` model calls,
    all above t = 0, as diffusers' multistep solvers place them.

    ``linspace`` and ``leading`` space ``num_steps + 1`` points and drop the cleanest (the solver's
    last step goes from the smallest listed t straight to a clean image); ``trailing`` is unchanged.
    """
    if spacing == "trailing":
        return sampling_timesteps(num_train_steps, num_steps, spacing, offset)
    if not 1 <= num_steps < num_train_steps:
        raise ValueError(f"must be between 1 and {num_train_steps - 1} for this model, got {num_steps}")
    return sampling_timesteps(num_train_steps, num_steps + 1, spacing, offset)[:-1]


# -- sigma schedules: n levels from sigma_max down to sigma_min, then 0 -------------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max to sigma_min, evenly spaced in sigma^(1/rho), then 0
    (Karras et al. 2022, "Elucidating the Design Space...", eq. 5; rho = 7)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([s, s.new_zeros(1)])


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n noise levels evenly spaced in log sigma (a geometric progression) from sigma_max to
    sigma_min, then 0: NCSN's levels (Song & Ermon 2019, sec. 4.2), the VE SDE's own discretisation
    (Song et al. 2021, eq. 9), and k-diffusion's ``get_sigmas_exponential``."""
    s = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))
    return torch.cat([s, s.new_zeros(1)])


# "geometric" (NCSN's word) and "exponential" (k-diffusion's) name the same levels.
SIGMA_SCHEDULES = {"karras": karras_sigmas, "exponential": exponential_sigmas, "geometric": exponential_sigmas}
# "discrete": the model's own levels (DiffusionProcess.sigmas); every other name is in SIGMA_SCHEDULES.
SCHEDULES = ("discrete", *SIGMA_SCHEDULES)
