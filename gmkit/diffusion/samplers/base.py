"""What every sampler shares: per-image noise, the state's scaling, the types of the contract."""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch

Noise = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[int, float, torch.Tensor], None] | None  # (step index, sigma, x) after each step


def randn(shape: Sequence[int], noise: Noise, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; with one generator per sample, row i comes from generator i alone.

    Drawn on the CPU so that the same seed gives the same image on every device.
    """
    if isinstance(noise, (list, tuple)):
        if len(noise) != shape[0]:
            raise ValueError(f"{len(noise)} generators for a batch of {shape[0]}")
        x = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in noise])
    else:
        x = torch.randn(tuple(shape), generator=noise)
    return x.to(device=device, dtype=dtype)


def levels(sigmas) -> list[float]:
    """The noise levels as Python floats (float64): a model's own levels are then matched exactly."""
    return [float(s) for s in sigmas]


def predict_x0(x: torch.Tensor, eps: torch.Tensor, a_t: float) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)   (Ho et al. 2020, eq. 15 rearranged)."""
    return (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5


def sigma_view(sampler: Callable) -> Callable:
    """Run a sampler written in k-diffusion's sigma view, x = x0 + sigma z, on the contract's state.

    The contract's state is the unit-variance one, x / sqrt(1 + sigma^2) (DDPM's x_t; pure noise is
    a standard normal draw at any sigma_max), so every sampler starts from the same noise and
    ``--init`` files mean the same thing for all. At sigma = 0 the two views coincide. The sigma-view
    function itself stays reachable as ``sampler.__wrapped__``.
    """

    @functools.wraps(sampler)
    def run(denoiser, x: torch.Tensor, sigmas, *args, **kwargs) -> torch.Tensor:
        first, last = float(sigmas[0]), float(sigmas[-1])
        x = sampler(denoiser, x * math.sqrt(1 + first ** 2), sigmas, *args, **kwargs)
        return x / math.sqrt(1 + last ** 2) if last else x

    return run
