"""CycleGAN: unpaired translation between two domains (Zhu et al. 2017, "Unpaired Image-to-Image
Translation using Cycle-Consistent Adversarial Networks").

    G_ab: A -> B, G_ba: B -> A             U-Net generators (gmkit/nn/translation.py)
    D_a, D_b                               PatchGAN discriminators, one per domain
    L_G = l(D_b(G_ab(a)), real) + l(D_a(G_ba(b)), real)                         (eq. 1, least squares)
        + lambda_cyc (||G_ba(G_ab(a)) - a||_1 + ||G_ab(G_ba(b)) - b||_1)         (eq. 2, lambda_cyc = 10)
        + lambda_id lambda_cyc (||G_ab(b) - b||_1 + ||G_ba(a) - a||_1)           (section 5.2, lambda_id = 0.5)
    L_D = 1/2 [l(D(real), real) + l(D(pool(fake)), fake)] for each domain      (section 4: halved, image pool of 50)

The identity term needs both domains to have the same number of channels; it is skipped otherwise.
Nothing in a batch pairs an ``a`` with a ``b``: the data matches them at random (gmkit/data/paired.py).
The image pools are training state: they go to train_state.safetensors (exact resume), not to the model.
``gmkit sample MODEL --image x.png --direction a2b|b2a`` picks the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.paired import jitter_and_flip
from ..errors import GmkitError, OptionError
from ..nn.translation import ImagePool, PatchDiscriminator, UNetGenerator, gan_loss
from .base import TrainOption
from .translation import Translator, TranslatorConfig, check_config, step_optimizer

DIRECTIONS = ("a2b", "b2a")


@dataclass
class CycleGANConfig(TranslatorConfig):
    cycle_weight: float = 10.0  # lambda_cyc
    identity_weight: float = 0.5  # lambda_id, relative to lambda_cyc (0 = off)
    pool_size: int = 50  # earlier fakes the discriminators also see (0 = off)


class CycleGAN(Translator):
    name = "cyclegan"
    Config = CycleGANConfig
    sample_options = frozenset({"image", "direction"})
    data_kind = "unpaired"
    default_data = "openmoji-line-art"  # with openmoji-colour as B: the bundled pairs, unpaired
    train_options = {"data_b": TrainOption("domain B (--data is A): anything --data takes", applies_to="cyclegan")}

    @classmethod
    def load_training_data(cls, spec: str, opts, options: dict[str, Any]):
        if spec == cls.default_data and not options.get("data_b"):
            options = {**options, "data_b": "openmoji-colour"}
        return super().load_training_data(spec, opts, options)

    def __init__(self, config: CycleGANConfig):
        check_config(config)
        if config.pool_size < 0 or config.cycle_weight < 0 or config.identity_weight < 0:
            raise GmkitError("pool_size, cycle_weight and identity_weight must be >= 0")
        super().__init__(config)
        c = config
        ca, cb = c.source_channels, c.in_channels
        self.gen_ab = UNetGenerator(ca, cb, c.g_channels, c.norm, c.dropout)
        self.gen_ba = UNetGenerator(cb, ca, c.g_channels, c.norm, c.dropout)
        self.disc_a = PatchDiscriminator(ca, c.d_channels, c.norm)
        self.disc_b = PatchDiscriminator(cb, c.d_channels, c.norm)
        self.pool_a, self.pool_b = ImagePool(c.pool_size), ImagePool(c.pool_size)

    def generator_for(self, direction: str | None):
        if direction not in (None, *DIRECTIONS):
            raise OptionError("direction", f"must be a2b or b2a, got {direction!r}")
        return self.gen_ba if direction == "b2a" else self.gen_ab

    def input_channels(self, direction: str | None = None) -> int:
        return self.config.in_channels if direction == "b2a" else self.config.source_channels

    def generator_params(self):
        return [*self.gen_ab.parameters(), *self.gen_ba.parameters()]

    def discriminator_params(self):
        return [*self.disc_a.parameters(), *self.disc_b.parameters()]

    def training_state(self) -> dict[str, torch.Tensor]:
        return {**{f"pool_a.{k}": v for k, v in self.pool_a.state().items()},
                **{f"pool_b.{k}": v for k, v in self.pool_b.state().items()}}

    def load_training_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, pool in (("pool_a", self.pool_a), ("pool_b", self.pool_b)):
            pool.load({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})

    def _domains(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "source" not in batch:
            raise GmkitError("cyclegan trains on two domains: the batch has no 'source' (domain A) images")
        a, b = batch["source"], batch["image"]
        if self.training:  # unpaired: each domain gets its own jitter and mirror
            (a,), (b,) = jitter_and_flip([a], self.config.jitter, self.config.flip), \
                jitter_and_flip([b], self.config.jitter, self.config.flip)
        return a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)

    def generator_losses(self, a: torch.Tensor, b: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The generator objective's terms, and the two fakes (G_ba(b), G_ab(a))."""
        c = self.config
        fake_b, fake_a = self.gen_ab(a), self.gen_ba(b)
        terms = {"g_gan": gan_loss(self.disc_b(fake_b), True, c.gan_loss, True)
                 + gan_loss(self.disc_a(fake_a), True, c.gan_loss, True),
                 "cycle": F.l1_loss(self.gen_ba(fake_b).float(), a.float()) + F.l1_loss(self.gen_ab(fake_a).float(), b.float())}
        total = terms["g_gan"] + c.cycle_weight * terms["cycle"]
        if c.identity_weight > 0 and c.source_channels == c.in_channels:
            terms["identity"] = F.l1_loss(self.gen_ab(b).float(), b.float()) + F.l1_loss(self.gen_ba(a).float(), a.float())
            total = total + c.identity_weight * c.cycle_weight * terms["identity"]
        terms["g_loss"] = total
        return terms, fake_a, fake_b

    def d_loss(self, disc, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        kind = self.config.gan_loss
        return 0.5 * (gan_loss(disc(real), True, kind) + gan_loss(disc(fake), False, kind))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All losses without stepping (evaluation; no pool)."""
        a, b = self._domains(batch)
        terms, fake_a, fake_b = self.generator_losses(a, b)
        d = self.d_loss(self.disc_a, a, fake_a.detach()) + self.d_loss(self.disc_b, b, fake_b.detach())
        return {"loss": terms["g_loss"] + d, "d_loss": d, **terms}

    def train_step(self, wrapped, batch: dict, opts: dict, step: int, grad_clip: float) -> dict[str, float]:
        """Generators first, then discriminators on pooled fakes (the order of the authors' code)."""
        a, b = self._domains(batch)
        discs = (self.disc_a, self.disc_b)
        for d in discs:
            d.requires_grad_(False)
        try:
            terms, fake_a, fake_b = self.generator_losses(a, b)
            if not torch.isfinite(terms["g_loss"]):
                return {"loss": float(terms["g_loss"].detach())}
            g_norm = step_optimizer(opts["generator"], terms["g_loss"], self.generator_params(), grad_clip)
        finally:
            for d in discs:
                d.requires_grad_(True)
        d_a = self.d_loss(self.disc_a, a, self.pool_a.query(fake_a))
        d_b = self.d_loss(self.disc_b, b, self.pool_b.query(fake_b))
        d_loss = d_a + d_b
        if not torch.isfinite(d_loss):
            return {"loss": float(d_loss.detach()), "d_loss": float(d_loss.detach())}
        d_norm = step_optimizer(opts["discriminator"], d_loss, self.discriminator_params(), grad_clip)
        stats = {k: float(v.detach()) for k, v in terms.items()}
        return {"loss": stats["g_loss"] + float(d_loss.detach()), **stats, "d_a": float(d_a.detach()),
                "d_b": float(d_b.detach()), "d_grad_norm": d_norm, "g_grad_norm": g_norm}

    def sample(self, noise: list[torch.Generator], image: torch.Tensor | None = None, direction: str | None = None,
               **options: Any) -> torch.Tensor:
        self.generator_for(direction)  # checks the name
        return super().sample(noise, image=image, direction=direction, **options)
