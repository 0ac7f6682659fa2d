"""The diffusion process that every diffusion family composes (ddpm, ldm, sr, vqldm, score).

One object holds what a diffusion model *is*, apart from its network:

- the noise levels: DDPM's discrete alpha-bar_t from betas (``DiscreteLevels``) or a continuous SDE
  (``VESDE`` / ``VPSDE``, Song et al. 2021). Karras et al. (2022, sec. 2-4) observe that
  x_t / sqrt(a) = x0 + sigma z with sigma = sqrt((1 - a) / a): every such process is the
  variance-exploding one in disguise, so levels are named by sigma throughout, and
  alpha-bar(sigma) = 1 / (1 + sigma^2);
- noising, q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I)  (Ho et al. 2020, eq. 4): ``q_sample``, the only
  place it is written;
- the training target the network predicts (``prediction``: epsilon, v_prediction (Salimans & Ho
  2022), sample (x_0) or score) and the loss, with a weighting hook (``LOSS_WEIGHTINGS``);
- the conversion of the network's output into a denoiser D(x, sigma) (``Denoiser``), which is all a
  sampler sees (``samplers/``).

The network always sees the unit-variance state x_t = sqrt(a) x_0 + sqrt(1 - a) z and a noise
conditioning ``c_noise(sigma)``: the fractional timestep for discrete models (``DiscreteLevels.t``,
the one rule: log sigma interpolated between neighbouring timesteps, as k-diffusion does), 999 t for
SDE time t in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import GmkitError
from .samplers.ddim import STEP_VARIANCES
from .schedules import SIGMA_SCHEDULES, alphas_cumprod, make_betas, sampling_timesteps, solver_timesteps

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, c_noise (N,)) -> raw output, float32
PREDICTIONS = ("epsilon", "v_prediction", "sample", "score")


@dataclass
class ProcessConfig:
    """Settings of a discrete-time process, named as in diffusers' scheduler configs (checkpoints
    store them flat beside the family's own settings)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | cosine
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample | score
    clip_sample: bool = True  # clamp predicted x_0 to [-1, 1] in the ddpm and ddim samplers
    timestep_spacing: str = "trailing"  # leading | trailing | linspace
    steps_offset: int = 0
    solver_spacing: str | None = None  # DPM-Solver++'s timestep spacing where it differs; None: timestep_spacing
    set_alpha_to_one: bool = True  # DDIM's last step lands on alpha-bar 1 (False: on alpha-bar_0, as SD's schedulers)
    variance_type: str = "fixed_small"  # the ddpm step variance: fixed_small, fixed_large, learned_range (step_variance)
    loss_weighting: str = "none"  # none | min_snr (LOSS_WEIGHTINGS)
    min_snr_gamma: float = 5.0  # gamma of min_snr


# -- noise levels ---------------------------------------------------------------------------------


class DiscreteLevels:
    """DDPM's T discrete levels sigma_t = sqrt((1 - a_t) / a_t), t = 0..T-1, and the timesteps a
    sampler visits on them (spacing and offset as diffusers' schedulers place them)."""

    def __init__(self, acp: torch.Tensor, spacing: str = "trailing", offset: int = 0,
                 solver_spacing: str | None = None, set_alpha_to_one: bool = True):
        self.alphas_cumprod = acp.double()  # float64 CPU, not a buffer: model.half() must not touch it
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])
        self.num_levels = len(acp)
        self.spacing, self.offset = spacing, offset
        self.solver_spacing, self.set_alpha_to_one = solver_spacing or spacing, set_alpha_to_one
        self._index = {s: i for i, s in enumerate(self.sigmas.tolist())}  # exact lookups at the own levels

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose interpolated log sigma is log(sigma), clamped to [0, T-1]."""
        ls = self.log_sigmas
        log_s = sigma.double().clamp(self.sigma_min, self.sigma_max).log()
        hi = torch.searchsorted(ls, log_s).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return lo + w

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        lo = t.floor().long().clamp(0, len(self.sigmas) - 2)
        w = t.double() - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()

    c_noise = t  # the network was trained on integer timesteps; between them, the same rule

    def alpha_bar(self, sigma):
        if torch.is_tensor(sigma):
            return 1 / (1 + sigma.double() ** 2)
        i = self._index.get(sigma)
        return float(self.alphas_cumprod[i]) if i is not None else 1 / (1 + sigma ** 2)

    def draw(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (alpha-bar, c_noise) for t ~ U{0, ..., T-1}."""
        t = torch.randint(0, self.num_levels, (b,))
        return self.alphas_cumprod[t], t

    def own_sigmas(self, steps: int, solver: bool = False, ddim_final: bool = False) -> torch.Tensor:
        """The levels of ``steps`` training timesteps, then 0 (alpha-bar_0's level where DDIM is told
        ``set_alpha_to_one=False``); ``solver``: DPM-Solver++'s placement. ValueError for bad steps."""
        if solver:
            ts = solver_timesteps(self.num_levels, steps, self.solver_spacing, self.offset)
        else:
            ts = sampling_timesteps(self.num_levels, steps, self.spacing, self.offset)
        end = self.sigmas[:1] if ddim_final and not self.set_alpha_to_one else self.sigmas.new_zeros(1)
        return torch.cat([self.sigmas[ts], end])


class _SDELevels:
    """Shared by the SDEs: time t in [0, 1], the network conditioned on 999 t."""

    sigma_min: float
    sigma_max: float
    train_t_min = 0.0
    num_levels = None  # continuous: no discrete levels of its own

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        """SDE time as a fractional timestep in [0, 999], the range the UNet's sinusoidal embedding
        was designed for (Song et al. 2021 do the same)."""
        return 999.0 * self.t(sigma)

    def alpha_bar(self, sigma):
        return 1 / (1 + (sigma.double() if torch.is_tensor(sigma) else sigma) ** 2)

    def draw(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: t ~ U(t_min, 1), so sigma follows the SDE's own noise distribution (log-uniform
        for VE). Denoising score matching with lambda(sigma) = sigma^2 (Song et al. 2021, eq. 7) is
        then the plain epsilon loss."""
        t = self.train_t_min + (1 - self.train_t_min) * torch.rand(b)
        return self.alpha_bar(self.sigma(t.double())), 999.0 * t

    def own_sigmas(self, steps: int, **_) -> torch.Tensor:
        """``steps`` levels evenly spaced in SDE time from 1 to sigma_min's, then 0 (for VE: geometric)."""
        t = torch.linspace(1, float(self.t(torch.tensor(self.sigma_min, dtype=torch.float64))), steps,
                           dtype=torch.float64)
        return torch.cat([self.sigma(t).double(), torch.zeros(1, dtype=torch.float64)])


class VESDE(_SDELevels):
    """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t, t in [0, 1]
    (Song et al. 2021, eq. 30; the noise levels of NCSN, Song & Ermon 2019, made continuous)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class VPSDE(_SDELevels):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1],
    a(t) = exp(-t beta_min - t^2 (beta_max - beta_min) / 2) (Song et al. 2021, eq. 32-33), so
    sigma(t) = sqrt(1 / a(t) - 1). The continuous limit of DDPM's linear schedule."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, train_t_min: float = 1e-5):
        self.beta_min, self.beta_max, self.train_t_min = float(beta_min), float(beta_max), float(train_t_min)
        self.sigma_min = float(self.sigma(torch.tensor(t_min, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(t * self.beta_min + 0.5 * t ** 2 * (self.beta_max - self.beta_min)))

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        # Solve beta_min t + (beta_max - beta_min) t^2 / 2 = log(1 + sigma^2) for t >= 0.
        b0, db = self.beta_min, self.beta_max - self.beta_min
        c = torch.log1p(sigma.double() ** 2)
        return ((torch.sqrt(b0 ** 2 + 2 * db * c) - b0) / db).to(sigma.dtype)


# -- loss weighting -------------------------------------------------------------------------------

# Each maps (snr = a / (1 - a) per sample, prediction type, process) -> per-sample loss weights.
# Another weighting (EDM's lambda(sigma), Karras et al. 2022, table 1) is one more entry here.
def _min_snr(snr: torch.Tensor, prediction: str, process: "DiffusionProcess") -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy"): weight min(SNR, gamma) on the x_0 error, divided by what each target's error
    already carries: SNR (epsilon), SNR + 1 (v), 1 (x_0), SNR^2 (score)."""
    carried = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr), "score": snr ** 2}[prediction]
    return snr.clamp(max=process.min_snr_gamma) / carried


LOSS_WEIGHTINGS: dict[str, Callable | None] = {"none": None, "min_snr": _min_snr}


# -- the process ----------------------------------------------------------------------------------


def _per_sample(v, like: torch.Tensor):
    """A per-sample tensor (or a float) ready to multiply images like ``like``."""
    if not torch.is_tensor(v):
        return v
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


class DiffusionProcess:
    """Noise levels + training target + loss weighting; a plain object (no weights), built from the
    family's config. ``denoiser(net)`` wraps a network for the samplers."""

    def __init__(self, levels, prediction: str = "epsilon", clip_sample: bool = False,
                 loss_weighting: str = "none", min_snr_gamma: float = 5.0, variance_type: str = "fixed_small"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
        if not (min_snr_gamma > 0 and math.isfinite(min_snr_gamma)):  # gamma <= 0 would zero every weight
            raise ValueError(f"min_snr_gamma must be a positive number, got {min_snr_gamma}")
        if variance_type not in STEP_VARIANCES:
            raise ValueError(f"variance_type must be one of {', '.join(STEP_VARIANCES)}, got {variance_type!r}")
        self.levels, self.prediction, self.clip_sample = levels, prediction, clip_sample
        self.loss_weighting, self.min_snr_gamma = loss_weighting, float(min_snr_gamma)
        self.variance_type = variance_type  # the ddpm sampler's step variance

    @classmethod
    def discrete(cls, c: ProcessConfig) -> "DiffusionProcess":
        """The process a discrete-time family's config describes; a bad setting is a config error."""
        try:
            betas = make_betas(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end)
            levels = DiscreteLevels(alphas_cumprod(betas), c.timestep_spacing, c.steps_offset, c.solver_spacing,
                                    c.set_alpha_to_one)
            return cls(levels, c.prediction_type, c.clip_sample, c.loss_weighting, c.min_snr_gamma, c.variance_type)
        except ValueError as e:
            raise GmkitError(f"config: {e}") from None

    @property
    def sigma_min(self) -> float:
        return self.levels.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.levels.sigma_max

    def alpha_bar(self, sigma):
        return self.levels.alpha_bar(sigma)

    # -- noising and training -------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, a, z: torch.Tensor) -> torch.Tensor:
        """A draw of q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I) with noise ``z`` (Ho et al. 2020, eq. 4);
        ``a`` (alpha-bar) a float or one per sample."""
        return _per_sample(a ** 0.5, x0) * x0 + _per_sample((1 - a) ** 0.5, x0) * z

    @staticmethod
    def renoise(x: torch.Tensor, a: float, a_next: float, z: torch.Tensor) -> torch.Tensor:
        """Forward jump to a noisier level: q(x' | x) = N(sqrt(a'/a) x, (1 - a'/a) I) (the forward
        chain composed; RePaint, Lugmayr et al. 2022, eq. 8 for one step)."""
        ratio = a_next / a
        return ratio ** 0.5 * x + (1 - ratio) ** 0.5 * z

    def target(self, x0: torch.Tensor, z: torch.Tensor, a) -> torch.Tensor:
        """What the network learns to output for x_t = q_sample(x0, a, z)."""
        if self.prediction == "epsilon":
            return z
        if self.prediction == "v_prediction":  # v = sqrt(a) z - sqrt(1 - a) x0 (Salimans & Ho 2022)
            return _per_sample(a ** 0.5, x0) * z - _per_sample((1 - a) ** 0.5, x0) * x0
        if self.prediction == "sample":
            return x0
        return -z / _per_sample(((1 - a) / a) ** 0.5, x0)  # the score of the sigma-view x: -z / sigma

    def to_eps(self, out: torch.Tensor, x: torch.Tensor, a, sigma) -> torch.Tensor:
        """The network's output at state x (level sigma, alpha-bar a) as a noise estimate."""
        if self.prediction == "epsilon":
            return out
        a, s = _per_sample(a, x), _per_sample(sigma, x)
        if self.prediction == "v_prediction":
            return a ** 0.5 * out + (1 - a) ** 0.5 * x
        if self.prediction == "sample":
            return (x - a ** 0.5 * out) / (1 - a) ** 0.5
        return -s * out

    def loss_weights(self, a: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights of the training loss (None: plain mean squared error)."""
        fn = LOSS_WEIGHTINGS[self.loss_weighting]
        return None if fn is None else fn(a / (1 - a), self.prediction, self)

    def loss(self, net: Net, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training loss for clean ``x0`` (images or latents): draw levels and noise, noise x0,
        ask ``net(x_t, c_noise)``, compare with the target."""
        a, c = self.levels.draw(x0.shape[0])
        z = torch.randn_like(x0)
        pred = net(self.q_sample(x0, a, z), c.to(x0.device)).float()
        target = self.target(x0, z, a)
        w = self.loss_weights(a)
        if w is None:
            return {"loss": F.mse_loss(pred, target)}
        per_sample = (pred - target).pow(2).flatten(1).mean(1)
        return {"loss": (w.to(per_sample) * per_sample).mean(), "mse": per_sample.mean().detach()}

    # -- sampling -------------------------------------------------------------------------------
    def sigmas(self, schedule: str, steps: int, solver: bool = False, ddim_final: bool = False) -> torch.Tensor:
        """``steps`` noise levels then the last one (0, or alpha-bar_0's): ``discrete`` = the model's own
        (``solver``: DPM-Solver++'s placement), or a ``SIGMA_SCHEDULES`` name between sigma_min and
        sigma_max. ValueError when ``steps`` does not fit the model's own levels."""
        if schedule == "discrete":
            return self.levels.own_sigmas(steps, solver=solver, ddim_final=ddim_final)
        return SIGMA_SCHEDULES[schedule](steps, self.sigma_min, self.sigma_max)

    def denoiser(self, net: Net) -> "Denoiser":
        return Denoiser(net, self)


class Denoiser:
    """A network as the samplers read it (Karras et al. 2022, table 1: "VP" preconditioning, with
    c_in = 1 / sqrt(1 + sigma^2) and c_noise from the process; k-diffusion's ``DiscreteEpsDDPMDenoiser``).

    ``denoiser(x, sigma)``: D(x, sigma), the clean-image estimate for the sigma-view x = x0 + sigma z;
    ``eps(x_t, sigma)``: the noise estimate for the state x_t = x / sqrt(1 + sigma^2). ``sigma`` is a
    float (one level for the batch) or one per sample.
    """

    def __init__(self, net: Net, process: DiffusionProcess):
        self.net, self.process = net, process
        self.sigma_min, self.sigma_max = process.sigma_min, process.sigma_max

    def alpha_bar(self, sigma):
        return self.process.alpha_bar(sigma)

    def eps(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.eps_and_variance(x, sigma)[0]

    def eps_and_variance(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The noise estimate, and the variance output of a network that also predicts its variance
        (twice the channels out, Nichol & Dhariwal 2021: read by the ddpm sampler's learned_range
        step; every other sampler drops it); None for a network without one."""
        if torch.is_tensor(sigma):
            c = self.process.levels.c_noise(sigma.double().cpu())
        else:  # from the float64 level, so a model's own levels give its integer timesteps exactly
            c = self.process.levels.c_noise(torch.tensor([sigma], dtype=torch.float64)).expand(x.shape[0])
        out = self.net(x, c.to(x.device, torch.float32))
        out, variance = out.split(x.shape[1], dim=1) if out.shape[1] == 2 * x.shape[1] else (out, None)
        return self.process.to_eps(out, x, self.alpha_bar(sigma), sigma), variance

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        s = (s.expand(x.shape[0]) if s.ndim == 0 else s).view(-1, *([1] * (x.ndim - 1)))
        return x - s * self.eps(x * (1 + s ** 2).rsqrt(), sigma)
