"""Noise schedules: the betas of the forward process and the timesteps a sampler visits."""

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


def sampling_timesteps(num_train_steps: int, num_steps: int, spacing: str = "trailing", offset: int = 0) -> list[int]:
    """The training timesteps a sampler visits, from noisiest to cleanest.

    ``leading``: 0, k, 2k, ... (+offset) as in DDIM's reference code; ``trailing``: ends at T-1, so
    sampling starts from pure noise (Lin et al. 2024 recommend it); ``linspace``: evenly rounded.
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"steps must be between 1 and {num_train_steps}, got {num_steps}")
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
        raise ValueError(f"steps must be between 1 and {num_train_steps - 1}, got {num_steps}")
    return sampling_timesteps(num_train_steps, num_steps + 1, spacing, offset)[:-1]
