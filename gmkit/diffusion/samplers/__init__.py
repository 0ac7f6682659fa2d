"""Every diffusion sampler, behind one contract, and one table of their facts.

The contract (k-diffusion's ``sampling.py`` is the model)::

    sampler(denoiser, x, sigmas, noise=..., callback=..., **its own parameters) -> x at sigmas[-1]

- ``denoiser``: a ``process.Denoiser``: ``denoiser(x, sigma)`` is D(x, sigma), the estimate of the
  clean image in the sigma view x = x0 + sigma z; ``denoiser.eps(x_t, sigma)`` is the noise
  estimate on the state x_t; ``denoiser.alpha_bar(sigma)`` = 1 / (1 + sigma^2).
- ``x``: the start at ``sigmas[0]``, in the unit-variance scaling x_t = x_sigma / sqrt(1 + sigma^2)
  (DDPM's x_t): pure noise is a standard normal draw whatever the sampler and model.
- ``sigmas``: noise levels noisiest first, usually ending with 0 (``schedules.py``;
  ``DiffusionProcess.sigmas`` picks them). Any schedule goes with any sampler.
- ``noise``: for stochastic samplers, one ``torch.Generator`` per image (``randn``), so image i
  depends on its own seed alone.
- ``callback(i, sigma, x)`` after each step.

The DDPM/DDIM/DPM-Solver++ family steps the state in alpha-bar form (``ddim.py``); the others are
written in the sigma view and wrapped by ``base.sigma_view``. Either way a call on a sub-range of
the levels is a valid part of a run (editing relies on it; dpm++2m then loses its history).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .base import Callback, Noise, predict_x0, randn, sigma_view
from .ddim import STEP_VARIANCES, ddim, ddim_invert, ddpm, step_variance
from .ode import dpmpp_2m, euler, heun, ode_encode
from .sde import annealed_langevin, euler_ancestral, euler_maruyama, predictor_corrector

__all__ = ["SAMPLERS", "Sampler", "default_steps", "network_calls", "Callback", "Noise", "randn", "predict_x0",
           "sigma_view", "ddpm", "step_variance", "STEP_VARIANCES", "ddim", "ddim_invert", "dpmpp_2m", "euler", "heun",
           "ode_encode", "euler_ancestral", "euler_maruyama", "predictor_corrector", "annealed_langevin"]


@dataclass(frozen=True)
class Sampler:
    """A sampler and its facts: what the CLI, bench and compare need to know about it (the paper and
    equation are in the function's docstring)."""

    fn: Callable
    default_steps: int | None  # None: every level of a discrete-time model (1000 for continuous ones)
    default_schedule: str  # discrete: the model's own levels; else a name in schedules.SIGMA_SCHEDULES
    stochastic: bool
    calls: Callable[[int], int]  # network calls per image for ``steps`` levels
    # Keywords it takes beyond the contract: clip and variance come from the model's process, the rest from the user.
    params: frozenset[str] = field(default_factory=frozenset)
    inpaint: str = "repaint"  # repaint: step by step with RePaint's replacement; masked: the denoiser is masked
    solver_timesteps: bool = False  # on discrete levels, DPM-Solver's placement (all above t = 0)
    set_alpha_to_one: bool = False  # on discrete levels, honours the model's set_alpha_to_one (DDIM's last step)


# name: function, default steps, default schedule, stochastic, network calls for n levels, ...
SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ddpm, None, "discrete", True, lambda n: n, frozenset({"clip", "variance"})),
    "ddim": Sampler(ddim, 50, "discrete", False, lambda n: n, frozenset({"eta", "clip"}), set_alpha_to_one=True),
    "dpm++2m": Sampler(dpmpp_2m, 50, "discrete", False, lambda n: n, inpaint="masked", solver_timesteps=True),
    "euler": Sampler(euler, 50, "karras", False, lambda n: n, inpaint="masked"),
    "heun": Sampler(heun, 18, "karras", False, lambda n: 2 * n - 1, inpaint="masked"),
    "euler-ancestral": Sampler(euler_ancestral, 50, "karras", True, lambda n: n, frozenset({"eta"})),
    "euler-maruyama": Sampler(euler_maruyama, 500, "geometric", True, lambda n: n),
    "pc": Sampler(predictor_corrector, 500, "geometric", True, lambda n: 2 * n - 1, frozenset({"snr"})),
    "langevin": Sampler(annealed_langevin, 100, "geometric", True, lambda n: 5 * n + 1),
}


def default_steps(name: str, num_levels: int | None = None) -> int:
    """A sampler's default number of levels; ``num_levels``: a discrete-time model's training timesteps."""
    return SAMPLERS[name].default_steps or num_levels or 1000


def network_calls(name: str, steps: int) -> int:
    """Network evaluations per image for ``steps`` noise levels (schedules end with an extra 0)."""
    return SAMPLERS[name].calls(steps)
