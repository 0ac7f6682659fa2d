"""pix2pix: paired image-to-image translation (Isola et al. 2017, "Image-to-Image Translation with
Conditional Adversarial Networks").

    G   U-Net generator: source x -> target y_hat = G(x)                  (gmkit/nn/translation.py)
    D   conditional PatchGAN: D(x, y) on the channel-concatenation of source and target
    L_D = 1/2 [ l(D(x, y), real) + l(D(x, G(x)), fake) ]                   (section 3.3: D's objective halved)
    L_G = l(D(x, G(x)), real) + lambda * ||y - G(x)||_1                    (eq. 4, lambda = 100)

``l`` is least squares by default (``gan_loss``; the paper's cross-entropy is ``vanilla``). Each loop
step runs G once, updates D on the detached result, then G through the updated D. Pairs get the same
random jitter and mirror (``jitter``, ``flip``; appendix 6.2). The paper's dropout-as-noise is off by
default (``dropout``): translations are deterministic, and the EMA generator is what sampling uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.paired import jitter_and_flip
from ..errors import GmkitError
from ..nn.translation import PatchDiscriminator, UNetGenerator, gan_loss
from .translation import Translator, TranslatorConfig, check_config, step_optimizer


@dataclass
class Pix2PixConfig(TranslatorConfig):
    l1_weight: float = 100.0  # lambda of eq. 4


class Pix2Pix(Translator):
    name = "pix2pix"
    Config = Pix2PixConfig

    def __init__(self, config: Pix2PixConfig):
        check_config(config)
        super().__init__(config)
        c = config
        self.generator = UNetGenerator(c.source_channels, c.in_channels, c.g_channels, c.norm, c.dropout)
        self.discriminator = PatchDiscriminator(c.source_channels + c.in_channels, c.d_channels, c.norm)

    def generator_for(self, direction: str | None):
        if direction not in (None, "a2b"):
            raise GmkitError(f"pix2pix models translate one way (a2b); direction {direction!r} needs a cyclegan model")
        return self.generator

    def generator_params(self):
        return list(self.generator.parameters())

    def discriminator_params(self):
        return list(self.discriminator.parameters())

    def _pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "source" not in batch:
            raise GmkitError("pix2pix trains on image pairs: the batch has no 'source' images")
        src, tgt = batch["source"], batch["image"]
        if self.training:
            src, tgt = jitter_and_flip([src, tgt], self.config.jitter, self.config.flip)
        return src.contiguous(memory_format=torch.channels_last), tgt.contiguous(memory_format=torch.channels_last)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both losses without stepping (evaluation)."""
        c = self.config
        src, tgt = self._pair(batch)
        fake = self.generator(src)
        d = 0.5 * (gan_loss(self.discriminator(torch.cat([src, tgt], 1)), True, c.gan_loss)
                   + gan_loss(self.discriminator(torch.cat([src, fake], 1)), False, c.gan_loss))
        l1 = F.l1_loss(fake.float(), tgt.float())
        g = gan_loss(self.discriminator(torch.cat([src, fake], 1)), True, c.gan_loss, for_generator=True)
        return {"loss": d + g + c.l1_weight * l1, "d_loss": d, "g_gan": g, "l1": l1}

    def train_step(self, wrapped, batch: dict, opts: dict, step: int, grad_clip: float) -> dict[str, float]:
        c = self.config
        G, D = self.generator, self.discriminator
        src, tgt = self._pair(batch)
        fake = G(src)

        # Discriminator on (source, target) vs (source, G(source)).
        real_logits = D(torch.cat([src, tgt], 1))
        fake_logits = D(torch.cat([src, fake.detach()], 1))
        d_loss = 0.5 * (gan_loss(real_logits, True, c.gan_loss) + gan_loss(fake_logits, False, c.gan_loss))
        if not torch.isfinite(d_loss):
            return {"loss": float(d_loss.detach()), "d_loss": float(d_loss.detach())}
        d_norm = step_optimizer(opts["discriminator"], d_loss, self.discriminator_params(), grad_clip)

        # Generator through the updated discriminator, plus L1 to the target.
        D.requires_grad_(False)  # gradients flow through D to G, but D's own are not needed
        try:
            g_gan = gan_loss(D(torch.cat([src, fake], 1)), True, c.gan_loss, for_generator=True)
            l1 = F.l1_loss(fake.float(), tgt.float())
            g_loss = g_gan + c.l1_weight * l1
            if not torch.isfinite(g_loss):
                return {"loss": float(g_loss.detach()), "d_loss": float(d_loss.detach())}
            g_norm = step_optimizer(opts["generator"], g_loss, self.generator_params(), grad_clip)
        finally:
            D.requires_grad_(True)

        return {"loss": float(d_loss.detach() + g_loss.detach()), "d_loss": float(d_loss.detach()),
                "g_gan": float(g_gan.detach()), "l1": float(l1.detach()),
                "d_real": float(real_logits.detach().float().mean()), "d_fake": float(fake_logits.detach().float().mean()),
                "d_grad_norm": d_norm, "g_grad_norm": g_norm}
