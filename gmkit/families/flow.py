"""A multi-scale normalizing flow in the RealNVP / Glow line: exact likelihood, exact latents.

    x (8-bit image) --dequantize--> y in (0, 1)^D --preprocess--> s --flow--> eps ~ N(0, I)

Dequantization (Theis et al. 2016; Dinh et al. 2017 section 4.1): y = (v + u) / K for pixel levels
v in {0..K-1}, u ~ U[0, 1)^D, so the continuous density bounds the discrete one:
    log P(v) >= E_u[log p(y)] - D log K.
Preprocessing, with its log-determinant counted: ``logit`` (RealNVP section 4.1),
    s = logit(a + (1 - 2a) y),   log|ds/dy| = sum log(1 - 2a) - log p - log(1 - p),  p = a + (1 - 2a) y
or ``affine`` (Glow), s = y - 1/2.

The flow (Kingma & Dhariwal 2018, "Glow", table 1), ``levels`` times:
    squeeze (2x2 space -> channels), then ``steps_per_level`` steps of
        actnorm          y = (x + b) * exp(logs); b, logs set from the first batch so that the
                         output has zero mean and unit variance per channel (data-dependent init)
        1x1 convolution  y = W x, W = P L (U + diag(sign * exp(log_s))): LU-decomposed, so
                         log|det| = H W sum(log_s) costs nothing
        affine coupling  x = [a, b]; (t, r) = NN(a); y = [a, (b + t) * sigmoid(r + 2)]
                         (NN: conv3x3-ReLU-conv1x1-ReLU-conv3x3, the last zero-initialised)
    then, except at the last level, split: half the channels leave as a latent z, modelled as
    N(mu(h), exp(logs(h))^2) given the half h that goes on (Glow's learned split prior);
    the last level's latent has a learned mean and scale.

Every latent is standardized, eps = (z - mu) * exp(-logs), so the map s -> eps is one invertible
function with p(s) = N(eps; 0, I) |det d eps / d s|; ``encode`` returns eps (all levels flattened
and concatenated, (N, D)) and ``decode`` inverts it exactly. Sampling draws eps ~ N(0, T^2 I) for
temperature T (Glow section 5.4: T < 1 trades diversity for cleaner images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.samplers import randn
from ..errors import GmkitError, OptionError
from ..nn.likelihood import LOG2PI
from .base import DECODE, ENCODE, LIKELIHOOD, SAMPLE, Family

PREPROCESS = ("logit", "affine")
SCALE_FLOOR, INVERSE_LIMIT, LOGS_LIMIT = 1e-6, 1e4, 30.0  # numerical guards of the inverse pass only


@dataclass
class FlowConfig:
    in_channels: int = 1
    image_size: int = 28
    levels: int = 2  # squeeze/split levels; image_size must be divisible by 2^levels
    steps_per_level: int = 8  # actnorm + 1x1 conv + coupling, per level
    hidden: int = 128  # channels of each coupling's network
    n_bits: int = 8  # pixel levels K = 2^n_bits for dequantization
    preprocess: str = "logit"  # logit | affine
    logit_alpha: float = 0.05  # logit preprocessing: squeeze [0, 1] into [a, 1 - a] first


def _dist_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a statistic over processes (so data-dependent init agrees across DDP ranks)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ActNorm(nn.Module):
    """Per-channel affine y = (x + b) * exp(logs), initialised from the first training batch."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        mean = _dist_mean(x.float().mean((0, 2, 3), keepdim=True))
        sq = _dist_mean(x.float().pow(2).mean((0, 2, 3), keepdim=True))
        std = (sq - mean.pow(2)).clamp_min(0).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._init(x)
        return (x + self.bias) * torch.exp(self.logs), self.logs.sum() * x.shape[2] * x.shape[3]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.logs) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution, LU-decomposed (Glow section 3.2): log|det W| = sum log|s|."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # a random rotation
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.lower.shape[0], device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight()
        return F.conv2d(x, w[:, :, None, None]), self.log_s.sum() * x.shape[2] * x.shape[3]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = torch.linalg.inv(self.weight().double()).to(y.dtype)
        return F.conv2d(y, w_inv[:, :, None, None])


class AffineCoupling(nn.Module):
    """y_a = x_a, y_b = (x_b + t(x_a)) * sigmoid(r(x_a) + 2)  (Glow's numerically tame scale)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.ca = channels // 2
        cb = channels - self.ca
        self.net = nn.Sequential(nn.Conv2d(self.ca, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(), zero_conv(hidden, 2 * cb))

    def _params(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(xa)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, :self.ca], x[:, self.ca:]
        shift, scale = self._params(xa)
        return torch.cat([xa, (xb + shift) * scale], 1), torch.log(scale).flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        ya, yb = y[:, :self.ca], y[:, self.ca:]
        shift, scale = self._params(ya)
        # Guards for latents far from anything the forward pass maps to (tails of N(0, T^2), an
        # undertrained flow): a scale that underflowed to 0 would divide into inf and then NaN.
        # Data-like inputs never reach either bound, so encode -> decode stays exact.
        xb = (yb / scale.clamp_min(SCALE_FLOOR) - shift).clamp(-INVERSE_LIMIT, INVERSE_LIMIT)
        return torch.cat([ya, xb], 1)


class FlowStep(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.conv = InvConv1x1(channels)
        self.coupling = AffineCoupling(channels, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, ld1 = self.actnorm(x)
        x, ld2 = self.conv(x)
        x, ld3 = self.coupling(x)
        return x, ld1 + ld2 + ld3

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.actnorm.inverse(self.conv.inverse(self.coupling.inverse(y)))


class Flow(Family):
    name = "flow"
    Config = FlowConfig
    capabilities = frozenset({SAMPLE, ENCODE, DECODE, LIKELIHOOD})
    sample_options = frozenset({"temperature"})
    latent_key = "z"  # the tensor ``decode`` reads from an encoded file
    preview_options = {"temperature": 0.7}

    def __init__(self, config: FlowConfig):
        super().__init__(config)
        c = config
        if c.levels < 1 or c.image_size % (2 ** c.levels):
            raise GmkitError(f"image_size {c.image_size} must be divisible by 2^levels = {2 ** c.levels}")
        if c.steps_per_level < 1 or c.hidden < 1 or not 1 <= c.n_bits <= 16:
            raise GmkitError("steps_per_level and hidden must be >= 1, n_bits between 1 and 16")
        if c.preprocess not in PREPROCESS:
            raise GmkitError(f"preprocess must be one of {', '.join(PREPROCESS)}, got {c.preprocess!r}")
        if not 0 < c.logit_alpha < 0.5:
            raise GmkitError(f"logit_alpha must be in (0, 0.5), got {c.logit_alpha}")
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()  # split priors: h -> (mu, logs) of the latent that leaves
        self.shapes: list[tuple[int, int, int]] = []  # each latent's (C, H, W), in encode order
        ch, size = c.in_channels, c.image_size
        for level in range(c.levels):
            ch, size = ch * 4, size // 2
            self.levels.append(nn.ModuleList(FlowStep(ch, c.hidden) for _ in range(c.steps_per_level)))
            if level < c.levels - 1:
                keep = ch // 2
                self.priors.append(zero_conv(keep, 2 * (ch - keep)))
                self.shapes.append((ch - keep, size, size))
                ch = keep
        self.shapes.append((ch, size, size))
        self.top_mean = nn.Parameter(torch.zeros(ch, size, size))
        self.top_logs = nn.Parameter(torch.zeros(ch, size, size))

    @property
    def levels_k(self) -> int:
        return 2 ** self.config.n_bits

    # -- data <-> unit cube <-> flow input ------------------------------------------------------
    def to_unit(self, x: torch.Tensor, u: torch.Tensor | float = 0.5) -> torch.Tensor:
        """Images in [-1, 1] -> y = (v + u) / K in (0, 1), v the integer pixel level."""
        k = self.levels_k
        v = torch.round((x.float() + 1) / 2 * (k - 1)).clamp(0, k - 1)
        return (v + u) / k

    def from_unit(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of ``to_unit`` at the bin centre: y -> images in [-1, 1] (clamped)."""
        k = self.levels_k
        return ((y * k - 0.5) / (k - 1) * 2 - 1).clamp(-1, 1)

    def preprocess(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y in (0, 1) -> s, with log|det ds/dy| per image."""
        if self.config.preprocess == "affine":
            return y - 0.5, torch.zeros(y.shape[0], device=y.device, dtype=y.dtype)
        a = self.config.logit_alpha
        p = a + (1 - 2 * a) * y
        s = torch.log(p) - torch.log1p(-p)
        logdet = (math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return s, logdet

    def postprocess(self, s: torch.Tensor) -> torch.Tensor:
        if self.config.preprocess == "affine":
            return s + 0.5
        a = self.config.logit_alpha
        return (torch.sigmoid(s) - a) / (1 - 2 * a)

    # -- the flow -----------------------------------------------------------------------------
    def flow_forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s -> eps (N, D), standardized latents of every level, and log|det d eps / d s| per image."""
        x = s
        logdet = torch.zeros(s.shape[0], device=s.device, dtype=torch.promote_types(s.dtype, torch.float32))
        eps = []
        for level, steps in enumerate(self.levels):
            x = squeeze(x)
            for step in steps:
                x, ld = step(x)
                logdet = logdet + ld
            if level < len(self.levels) - 1:
                keep = x.shape[1] // 2
                h, z = x[:, :keep], x[:, keep:]
                mu, logs = self.priors[level](h).chunk(2, 1)
                eps.append(((z - mu) * torch.exp(-logs)).flatten(1))
                logdet = logdet - logs.flatten(1).sum(1)
                x = h
        eps.append(((x - self.top_mean) * torch.exp(-self.top_logs)).flatten(1))
        logdet = logdet - self.top_logs.sum()
        return torch.cat(eps, 1), logdet

    def flow_inverse(self, eps: torch.Tensor) -> torch.Tensor:
        """eps (N, D) -> s: the exact inverse of ``flow_forward``."""
        sizes = [math.prod(s) for s in self.shapes]
        parts = list(eps.split(sizes, 1))
        n = eps.shape[0]
        x = parts[-1].view(n, *self.shapes[-1]) * torch.exp(self.top_logs) + self.top_mean
        for level in reversed(range(len(self.levels))):
            if level < len(self.levels) - 1:
                mu, logs = self.priors[level](x).chunk(2, 1)
                z = parts[level].view(n, *self.shapes[level]) * torch.exp(logs.clamp(max=LOGS_LIMIT)) + mu
                x = torch.cat([x, z], 1)
            for step in reversed(self.levels[level]):
                x = step.inverse(x)
            x = unsqueeze(x)
        return x

    def latent(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y in (0, 1) -> (eps, log|det d eps / d y|): preprocessing and flow together."""
        s, ld_pre = self.preprocess(y)
        eps, ld_flow = self.flow_forward(s.to(self.top_mean.dtype))
        wide = torch.promote_types(eps.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays
        return eps.to(wide), ld_pre + ld_flow.to(wide)

    def log_prob_unit(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) in nats per image, for dequantized y in (0, 1)^D (change of variables)."""
        eps, logdet = self.latent(y)
        return -0.5 * (LOG2PI + eps.pow(2)).sum(1) + logdet

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        y = self.to_unit(x, torch.rand_like(x, dtype=torch.float32))  # uniform dequantization
        nll = -(self.log_prob_unit(y) - self.dims * math.log(self.levels_k))  # nats per image, discrete
        bpd = nll.mean() / (self.dims * math.log(2))
        return {"loss": bpd, "bpd": bpd.detach()}

    # -- likelihood ---------------------------------------------------------------------------
    @torch.inference_mode()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """log P(x) of 8-bit images in nats per image, as the dequantization bound with one uniform
        draw per pixel (exact density of the dequantized image; a lower bound on the discrete one)."""
        x = x.to(self.device, torch.float32)
        u = torch.rand(x.shape, generator=generator).to(x.device)
        lp = self.log_prob_unit(self.to_unit(x, u)) - self.dims * math.log(self.levels_k)
        return {"log_px": lp}

    def bits_per_dim(self, x: torch.Tensor, labels=None, steps=None, batch_size: int = 250, seed: int = 0) -> dict[str, float]:
        """Mean negative log-likelihood of images in [-1, 1] in bits per dimension."""
        was = self.training
        self.eval()
        g = torch.Generator().manual_seed(seed)
        lps = [self.log_likelihood(x[s:s + batch_size], g)["log_px"].cpu() for s in range(0, x.shape[0], batch_size)]
        self.train(was)
        return {"bpd": float(-torch.cat(lps).mean() / (self.dims * math.log(2))), "images": int(x.shape[0])}

    # -- encode / decode / sample -------------------------------------------------------------
    def _refuse(self, options: dict) -> None:
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            names = ", ".join("{" + k + "}" for k in given)
            raise OptionError(given[0], f"{self.name} models are unconditional and exactly invertible: they do not take {names}")

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, **options: Any) -> dict[str, torch.Tensor]:
        """The exact latent: eps (N, D) of every level concatenated (pixels at their bin centres)."""
        self._refuse(options)
        x = x.to(self.device, torch.float32)
        eps, _ = self.latent(self.to_unit(x))
        return {"z": eps}

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, **options: Any) -> torch.Tensor:
        """Latents (N, D) from ``encode`` (or N(0, I) draws) -> images in [-1, 1]."""
        self._refuse(options)
        self.check_latents(z, self.dims)
        s = self.flow_inverse(z.to(self.device, self.top_mean.dtype))
        return self.from_unit(self.postprocess(s.float()))

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], temperature: float | None = None, **_: Any) -> torch.Tensor:
        t = 1.0 if temperature is None else temperature
        if not (t >= 0 and math.isfinite(t)):
            raise OptionError("temperature", f"must be >= 0, got {temperature}")
        eps = randn((len(noise), self.dims), noise, self.device) * t
        return self.decode(eps)
