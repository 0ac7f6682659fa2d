"""GAN inversion: the latent z whose image G(z) is closest to a given image, so a GAN can ``encode``.

    z* = argmin_z  ||G(z) - x||^2 / D  +  prior * ||z||^2 / d          (Zhu et al. 2016, "Generative Visual
                                                                         Manipulation on the Natural Image
                                                                         Manifold", eq. 2 with a Gaussian prior)

optimised with Adam from a start that is either an encoder's guess E(x) (the "hybrid" method of the
same paper, section 3.2) or the best of ``restarts`` draws z ~ N(0, I). The prior term keeps z where
the generator was trained (|z|^2 ~ d), so the latents still sample and interpolate sensibly.

The optional encoder (``LatentEncoder``, GAN config ``encoder_channels``) needs no real data: it is
trained beside the GAN to recover z from G(z), on the generator's own samples (``encoder_step``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError


class LatentEncoder(nn.Module):
    """image -> z: stride-2 convolutions, then a linear map to the latent (and no class: labels stay given)."""

    def __init__(self, in_channels: int, image_size: int, channels: list[int], latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            prev = ch
        self.net = nn.Sequential(*layers)
        s = image_size // 2 ** len(channels)
        self.head = nn.Linear(prev * s * s, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x).flatten(1))


def encoder_step(encoder: LatentEncoder, generator: nn.Module, opt: torch.optim.Optimizer, n: int, latent_dim: int,
                 labels: torch.Tensor | None, device) -> float:
    """One regression step of E(G(z)) onto z for fresh z ~ N(0, I); G is not changed."""
    z = torch.randn(n, latent_dim, device=device)
    with torch.no_grad():
        x = generator(z, labels)
    loss = F.mse_loss(encoder(x).float(), z)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def invert(generator: nn.Module, x: torch.Tensor, latent_dim: int, steps: int = 200, lr: float = 0.05,
           prior: float = 1e-3, restarts: int = 16, start: torch.Tensor | None = None,
           labels: torch.Tensor | None = None, num_classes: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """{"z": (N, latent_dim), "error": per-image MSE of G(z) against x, and "label" for conditional GANs}.

    Without ``start``, each image starts from the best of ``restarts`` draws (seeded by ``seed``); a
    conditional GAN without ``labels`` also draws a class per candidate and keeps the best."""
    if steps < 0:
        raise OptionError("steps", f"must be >= 0, got {steps}")
    was_training = generator.training
    generator.eval()
    dtype = next(generator.parameters()).dtype
    x = x.to(next(generator.parameters()).device, torch.float32)
    n = x.shape[0]

    def error(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return (generator(z.to(dtype), y).float() - x).pow(2).flatten(1).mean(1)

    try:
        with torch.no_grad():
            if start is not None:
                z0, y = start.float().to(x.device), labels
            else:
                g = torch.Generator().manual_seed(seed)
                best_err = torch.full((n,), float("inf"), device=x.device)
                z0 = torch.zeros(n, latent_dim, device=x.device)
                y = labels
                if num_classes and labels is None:
                    y = torch.zeros(n, dtype=torch.long, device=x.device)
                for _ in range(max(restarts, 1)):
                    cand = torch.randn(n, latent_dim, generator=g).to(x.device)
                    cy = labels
                    if num_classes and labels is None:
                        cy = torch.randint(num_classes, (n,), generator=g).to(x.device)
                    err = error(cand, cy)
                    better = err < best_err
                    best_err = torch.where(better, err, best_err)
                    z0[better] = cand[better]
                    if cy is not None and labels is None:
                        y[better] = cy[better]
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = error(z, y).sum() + prior * z.pow(2).sum() / latent_dim
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        z = z.detach()
        with torch.no_grad():
            out = {"z": z, "error": error(z, y)}
        if y is not None:
            out["label"] = y
        return out
    finally:
        generator.train(was_training)


class Invertible:
    """``encode`` / ``decode`` for a GAN family (``self.generator(z, labels)``, optional ``self.encoder``,
    ``config.latent_dim`` / ``num_classes``, and the family's ``_sample_labels``)."""

    latent_key = "z"  # the tensor ``decode`` reads from an encoded file

    def latent_description(self) -> dict:
        d = self.config.latent_dim
        how = "encoder guess + optimisation" if self.encoder is not None else "optimisation"
        return {"kind": "continuous", "shape": [d], "text": f"continuous: {d}-d generator input (encode by inversion: {how})"}

    def encode(self, x: torch.Tensor, steps: int | None = None, class_label=None, **_: Any) -> dict[str, torch.Tensor]:
        """The latent whose image is closest to each of ``x``: ``steps`` Adam steps (default 200) from the
        encoder's guess when the model has one, else from the best of 16 random draws."""
        c = self.config
        x = x.to(self.device, torch.float32)
        labels = self._sample_labels(class_label, [None] * x.shape[0], x.device) if class_label is not None else None
        start = None
        if self.encoder is not None:
            with torch.no_grad():
                start = self.encoder(x.to(self.generator.fc.weight.dtype)).float()
        return invert(self.generator, x, c.latent_dim, 200 if steps is None else steps, start=start, labels=labels,
                      num_classes=c.num_classes)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, class_label=None, **_: Any) -> torch.Tensor:
        self.check_latents(z, self.config.latent_dim)
        labels = None
        if self.config.num_classes:
            if class_label is None:
                raise OptionError("class_label", f"is needed: this {self.name} model is class-conditional")
            labels = self._sample_labels(class_label, [None] * z.shape[0], self.device)
        return self.generator(z.to(self.device, self.generator.fc.weight.dtype), labels).float().clamp(-1, 1)
