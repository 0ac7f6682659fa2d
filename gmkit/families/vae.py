"""Gaussian VAE (Kingma & Welling 2014) with a discretized-logistic decoder, and its conditional form.

    q(z | x) = N(mu(x), diag exp(logvar(x)))         encoder, reparameterized: z = mu + exp(logvar/2) * eps
    p(z)     = N(0, I)                               prior, what ``sample`` draws from
    p(x | z) = prod_i DLogistic(x_i; m_i(z), s_i(z))   decoder: a logistic per pixel integrated over
                                                       its 8-bit bin (PixelCNN++, Salimans et al. 2017)

Training minimizes the beta-weighted negative ELBO, E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z))
(Higgins et al. 2017 for beta != 1), per dimension. Because p(x|z) is a probability over the
256 levels of each pixel, -ELBO / (D ln 2) is an honest upper bound on bits/dim for 8-bit data;
``log_likelihood`` also gives the tighter importance-weighted bound (Burda et al. 2016, eq. 8):
    log p(x) >= E[log (1/K) sum_k p(x, z_k) / q(z_k | x)],  z_k ~ q(z | x).

With ``num_classes > 0`` encoder and decoder both see the label (a CVAE, Sohn et al. 2015);
``augvae`` builds on that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion.samplers import randn
from ..errors import GmkitError, OptionError
from ..nn.encoder_decoder import ConvDecoder, ConvEncoder
from ..nn.likelihood import LOG2PI, discretized_logistic_logp
from .base import DECODE, ENCODE, LIKELIHOOD, SAMPLE, Family


@dataclass
class VAEConfig:
    in_channels: int = 1
    image_size: int = 28
    channels: list[int] = field(default_factory=lambda: [32, 64])  # one stride-2 stage each
    res_blocks: int = 1
    feature_channels: int = 32  # channels of the last feature map, flattened into the latent head
    latent_dim: int = 16
    beta: float = 1.0  # weight of the KL term (1 = the ELBO)
    num_classes: int = 0  # > 0: a conditional VAE (labels go to encoder and decoder)
    iw_samples: int = 64  # importance samples for the IWAE bound in log_likelihood
    temperature: float = 1.0  # sample z ~ N(0, temperature^2 I); < 1 trades diversity for fidelity


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * (LOG2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


class VAE(Family):
    name = "vae"
    Config = VAEConfig
    capabilities = frozenset({SAMPLE, ENCODE, DECODE, LIKELIHOOD})
    sample_options = frozenset()
    latent_key = "mean"  # the tensor ``decode`` reads from an encoded file
    class_conditioning = "optional"

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        if not c.channels or c.image_size % (2 ** len(c.channels)):
            raise GmkitError(f"image_size {c.image_size} must be divisible by 2^{len(c.channels)} "
                             f"(one halving per entry of channels)")
        if c.latent_dim < 1 or c.num_classes < 0:
            raise GmkitError("latent_dim must be >= 1 and num_classes >= 0")
        self.s = c.image_size // 2 ** len(c.channels)
        flat = c.feature_channels * self.s * self.s
        self.encoder = ConvEncoder(c.in_channels, c.channels, c.feature_channels, c.res_blocks)
        self.to_latent = nn.Linear(flat + c.num_classes, 2 * c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim + c.num_classes, flat)
        self.decoder = ConvDecoder(c.feature_channels, c.channels, 2 * c.in_channels, c.res_blocks)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # -- the model ----------------------------------------------------------------------------
    def _onehot(self, labels: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        k = self.config.num_classes
        if k == 0:
            return None
        if labels is None:
            raise OptionError("class_label", f"is needed: this {self.name} model is class-conditional")
        return F.one_hot(labels.to(device).long().view(n), k).float()

    def posterior(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | x[, y]), each (N, latent_dim)."""
        h = self.encoder(x).flatten(1)
        y = self._onehot(labels, x.shape[0], x.device)
        if y is not None:
            h = torch.cat([h, y.to(h.dtype)], 1)
        mu, logvar = self.to_latent(h).float().chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decoder_params(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_scale) of the discretized logistic p(x | z[, y]), each (N, C, H, W)."""
        y = self._onehot(labels, z.shape[0], z.device)
        if y is not None:
            z = torch.cat([z, y.to(z.dtype)], 1)
        dtype = self.from_latent.weight.dtype
        h = self.from_latent(z.to(dtype)).view(z.shape[0], self.config.feature_channels, self.s, self.s)
        mean, log_scale = self.decoder(h).float().chunk(2, dim=1)
        return mean, log_scale

    def _terms(self, x_in: torch.Tensor, x_target: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: reconstruction -log p(x|z) with one reparameterized z, and KL(q || p), nats."""
        mu, logvar = self.posterior(x_in, labels)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterization trick
        mean, log_scale = self.decoder_params(z, labels)
        nll = -discretized_logistic_logp(x_target, mean, log_scale).flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)  # closed form, Kingma & Welling app. B
        return nll, kl

    def training_views(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder input, reconstruction target); the AugVAE augments the first."""
        return batch["image"], batch["image"]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_in, x = self.training_views(batch)
        labels = batch.get("label") if self.config.num_classes else None
        nll, kl = self._terms(x_in, x, labels)
        per_dim = math.log(2) * self.dims  # nats per image -> bits per dim
        loss = (nll + self.config.beta * kl).mean() / self.dims
        return {"loss": loss, "rec_bpd": nll.mean().detach() / per_dim, "kl_bpd": kl.mean().detach() / per_dim,
                "elbo_bpd": (nll + kl).mean().detach() / per_dim}

    # -- likelihood ---------------------------------------------------------------------------
    @torch.inference_mode()
    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None, samples: int | None = None,
                       generator: torch.Generator | None = None, chunk: int = 4096) -> dict[str, torch.Tensor]:
        """Lower bounds on log p(x) in nats per image: ``elbo`` (one-sample estimate of the ELBO
        averaged over the K samples) and ``iwae`` (the K-sample importance-weighted bound)."""
        k = samples or self.config.iw_samples
        x = x.to(self.device, torch.float32)
        mu, logvar = self.posterior(x, labels)
        n, d = mu.shape
        eps = torch.randn((k, n, d), generator=generator).to(mu.device) if generator is not None \
            else torch.randn((k, n, d), device=mu.device)
        z = mu[None] + torch.exp(0.5 * logvar)[None] * eps  # (K, N, D)
        flat_z = z.reshape(k * n, d)
        xs = x[None].expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        ys = labels.to(self.device).view(1, n).expand(k, n).reshape(-1) if labels is not None else None
        log_px = []
        for s in range(0, k * n, chunk):
            mean, log_scale = self.decoder_params(flat_z[s:s + chunk], ys[s:s + chunk] if ys is not None else None)
            log_px.append(discretized_logistic_logp(xs[s:s + chunk], mean, log_scale).flatten(1).sum(1))
        log_px = torch.cat(log_px).view(k, n)
        log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        log_qz = gaussian_log_prob(z, mu[None], logvar[None])
        log_w = log_px + log_pz - log_qz
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return {"elbo": log_px.mean(0) - kl, "iwae": torch.logsumexp(log_w, 0) - math.log(k)}

    def bits_per_dim(self, x: torch.Tensor, labels: torch.Tensor | None = None, steps: int | None = None,
                     batch_size: int = 100, seed: int = 0, samples: int | None = None) -> dict[str, float]:
        """Mean bits/dim of the ELBO and IWAE bounds over ``x`` (upper bounds on the true bits/dim)."""
        g = torch.Generator().manual_seed(seed)
        elbo, iwae = [], []
        for s in range(0, x.shape[0], batch_size):
            ll = self.log_likelihood(x[s:s + batch_size], labels[s:s + batch_size] if labels is not None else None,
                                     samples, g)
            elbo.append(ll["elbo"].cpu())
            iwae.append(ll["iwae"].cpu())
        scale = math.log(2) * self.dims
        return {"elbo_bpd": float(-torch.cat(elbo).mean() / scale), "iwae_bpd": float(-torch.cat(iwae).mean() / scale),
                "samples": samples or self.config.iw_samples, "images": int(x.shape[0])}

    # -- encode / decode / sample -------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: torch.Tensor, class_label=None, **_: Any) -> dict[str, torch.Tensor]:
        """Posterior mean and log-variance, each (N, latent_dim); conditional models also keep the label."""
        x = x.to(self.device, next(self.parameters()).dtype)
        labels = self.class_labels(class_label, x.shape[0], x.device)
        mu, logvar = self.posterior(x, labels)
        out = {"mean": mu, "logvar": logvar}
        if labels is not None:
            out["label"] = labels
        return out

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, class_label=None, **_: Any) -> torch.Tensor:
        """Latents (N, latent_dim) -> images in [-1, 1] (the decoder's mean)."""
        self.check_latents(z, self.config.latent_dim)
        z = z.to(self.device, torch.float32)
        labels = self.class_labels(class_label, z.shape[0], z.device)
        if self.config.num_classes and labels is None:
            raise OptionError("class_label", f"is needed: this {self.name} model is class-conditional")
        mean, _ = self.decoder_params(z, labels)
        return mean.clamp(-1, 1)

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], class_label: int | None = None, **_: Any) -> torch.Tensor:
        n = len(noise)
        z = randn((n, self.config.latent_dim), noise, self.device) * self.config.temperature
        labels = self.class_labels(class_label, n, self.device)
        if self.config.num_classes and labels is None:  # each image's class from its own generator
            labels = torch.stack([torch.randint(self.config.num_classes, (), generator=g) for g in noise]).to(self.device)
        mean, _ = self.decoder_params(z, labels)
        return mean.clamp(-1, 1)
