"""DCGAN-style GAN (Radford et al. 2016) with the stabilisers practitioners reach for first.

    generator      z ~ N(0, I) -> Linear -> (C0, s, s) -> [ConvTranspose 4x4 stride 2 -> norm -> ReLU]* -> tanh
    discriminator  image -> [Conv 4x4 stride 2 -> LeakyReLU(0.2)]* -> Linear -> one logit,
                   every layer spectrally normalized (Miyato et al. 2018, "SN-GAN")

Losses (``loss`` in the config):
    hinge           L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))],  L_G = -E[D(G(z))]  (Lim & Ye 2017)
    nonsaturating   L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))],    L_G = E[softplus(-D(G(z)))]
                    (Goodfellow et al. 2014, section 3: the "-log D" trick)
Optional R1 penalty on real images, (gamma / 2) E[||grad_x D(x)||^2] (Mescheder et al. 2018, eq. 9),
applied lazily every ``r1_every`` steps and scaled by it (Karras et al. 2020, StyleGAN2 section B).
For little data: DiffAugment (``augment``, gmkit.nn.diffaugment) and a faster discriminator
(``d_lr_scale``: the two time-scale update rule, Heusel et al. 2017).

Class-conditional (``num_classes > 0``): the generator sees a learned class embedding beside z;
the discriminator is a projection discriminator, D(x, y) = psi(h) + <embed(y), h>
(Miyato & Koyama 2018, eq. 3).

Generator EMA: the shared training loop keeps an exponential moving average of the whole module,
and ``model.safetensors`` holds those averaged weights, so sampling uses the EMA generator
(Karras et al. 2018; Yazici et al. 2019).

Training is two optimizers ("generator", "discriminator") and an alternating step, one D update
then one G update per loop step, in ``train_step``. What it logs exposes instability: both losses,
D's mean logit on real and on fake images, both nets' gradient norms, and every ``diversity_every``
steps the mean pairwise distance of a fixed batch of generated images divided by that of the real
batch, within each class when conditional (``diversity``, about 1 for a healthy generator, near 0
under mode collapse). A run stops with an error when that ratio stays under ``collapse_threshold``
for ``collapse_patience`` checks.

Multi-process (DDP) training: the step calls the generator and discriminator directly rather
than through the DDP wrapper (two optimizers and two backward passes per step do not fit one
wrapped forward), so it averages gradients itself with ``all_reduce`` and broadcasts the
generator's BatchNorm statistics from rank 0, which keeps every rank's weights identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..diffusion.samplers import randn
from ..errors import GmkitError, OptionError, StopTraining
from ..nn.blocks import norm_layer
from ..nn.diffaugment import diff_augment, parse_policy
from .base import CLASS_COND, DECODE, ENCODE, SAMPLE, Family
from .gan_inversion import Invertible, LatentEncoder, encoder_step

LOSSES = ("hinge", "nonsaturating")
G_NORMS = ("batch", "group", "none")


@dataclass
class GANConfig:
    in_channels: int = 1
    image_size: int = 28
    latent_dim: int = 64
    g_channels: list[int] = field(default_factory=lambda: [128, 64])  # generator: one x2 upsampling per entry
    d_channels: list[int] = field(default_factory=lambda: [64, 128])  # discriminator: one /2 per entry
    g_norm: str = "batch"  # batch | group | none: normalization in the generator
    spectral_norm: bool = True  # spectral normalization of every discriminator layer
    num_classes: int = 0  # > 0: class-conditional (embedding in G, projection in D)
    loss: str = "hinge"  # hinge | nonsaturating
    r1_gamma: float = 0.0  # R1 penalty weight on real images (0 = off)
    r1_every: int = 4  # lazy R1: every this many steps, scaled up by it
    beta1: float = 0.5  # Adam betas for both nets (DCGAN: 0.5, 0.999)
    beta2: float = 0.999
    d_lr_scale: float = 1.0  # discriminator lr = this x the generator's (TTUR, Heusel et al. 2017)
    augment: str = ""  # DiffAugment policies seen by D, e.g. "translation,cutout" (gmkit.nn.diffaugment)
    diversity_every: int = 100  # steps between diversity checks (0 = never)
    diversity_batch: int = 64  # generated images in the fixed diversity batch
    collapse_threshold: float = 0.2  # diversity ratio below which a check counts as collapsed (0 = off)
    collapse_patience: int = 5  # consecutive collapsed checks that stop the run
    collapse_after: int = 1000  # no collapse verdict before this step (early generators are blurry)
    encoder_channels: list[int] = field(default_factory=list)  # > 0 entries: an encoder E(G(z)) ~ z for inversion


class Generator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        self.s = c.image_size // 2 ** len(c.g_channels)
        self.c0 = c.g_channels[0]
        self.embed = nn.Embedding(c.num_classes, c.latent_dim) if c.num_classes else None
        self.fc = nn.Linear(c.latent_dim * (2 if c.num_classes else 1), self.c0 * self.s * self.s)
        layers: list[nn.Module] = [norm_layer(c.g_norm, self.c0), nn.ReLU()]
        chans = list(c.g_channels)
        for i, ch in enumerate(chans):
            last = i == len(chans) - 1
            out = c.in_channels if last else chans[i + 1]
            layers.append(nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1))
            if not last:
                layers += [norm_layer(c.g_norm, out), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], 1)
        h = self.fc(z).view(z.shape[0], self.c0, self.s, self.s)
        return torch.tanh(self.net(h))


class Discriminator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        sn = spectral_norm if c.spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        prev = c.in_channels
        for ch in c.d_channels:
            layers += [sn(nn.Conv2d(prev, ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            prev = ch
        self.net = nn.Sequential(*layers)
        s = c.image_size // 2 ** len(c.d_channels)
        self.features = prev * s * s
        self.head = sn(nn.Linear(self.features, 1))
        self.embed = sn(nn.Embedding(c.num_classes, self.features)) if c.num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One logit per image, shape (N,)."""
        h = self.net(x).flatten(1)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(1)  # projection term <embed(y), h>
        return out


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of distinct images of a batch."""
    flat = x.flatten(1).float()
    n = flat.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(flat, flat)
    return float(d.sum() / (n * (n - 1)))


def truncated_normal(shape: tuple[int, ...], noise: list[torch.Generator], t: float, device) -> torch.Tensor:
    """The truncation trick (Brock et al. 2019, section 3.1): z ~ N(0, I) with every component
    |z_j| > t redrawn until it falls inside; image i still uses only its own generator."""
    rows = []
    for g in noise:
        z = torch.randn(shape[1:], generator=g)
        for _ in range(10_000):
            bad = z.abs() > t
            if not bool(bad.any()):
                break
            z[bad] = torch.randn(int(bad.sum()), generator=g)
        rows.append(z.clamp(-t, t))  # only reached when t is absurdly small
    return torch.stack(rows).to(device)


def _all_reduce_grads(params) -> None:
    """Average gradients over processes when training with torch.distributed (DDP stand-in)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _broadcast_buffers(module: nn.Module) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, 0)


class GAN(Invertible, Family):
    name = "gan"
    Config = GANConfig
    capabilities = frozenset({SAMPLE, CLASS_COND, ENCODE, DECODE})
    sample_options = frozenset({"truncation", "class_label"})
    # DCGAN's recipe: Adam at 2e-4, no warm-up, no gradient clipping; EMA of the generator.
    train_defaults: ClassVar[dict] = {"lr": 2e-4, "warmup": 0, "grad_clip": 0.0, "ema_decay": 0.999}
    class_conditioning = "optional"
    no_likelihood = "implicit model: a GAN defines no density to evaluate"

    def __init__(self, config: GANConfig):
        super().__init__(config)
        c = config
        if c.loss not in LOSSES:
            raise GmkitError(f"loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
        if c.g_norm not in G_NORMS:
            raise GmkitError(f"g_norm must be one of {', '.join(G_NORMS)}, got {c.g_norm!r}")
        for key in ("g_channels", "d_channels"):
            chans = getattr(c, key)
            if not chans or c.image_size % (2 ** len(chans)):
                raise GmkitError(f"image_size {c.image_size} must be divisible by 2^{len(chans)} "
                                 f"(one x2 step per entry of {key})")
        if c.latent_dim < 1 or c.num_classes < 0 or c.r1_gamma < 0 or c.r1_every < 1:
            raise GmkitError("latent_dim and r1_every must be >= 1; num_classes and r1_gamma >= 0")
        if not 0 < c.d_lr_scale <= 100:
            raise GmkitError(f"d_lr_scale must be in (0, 100], got {c.d_lr_scale}")
        try:
            self._augment = parse_policy(c.augment)
        except ValueError as e:
            raise GmkitError(str(e)) from None
        self.generator = Generator(c)
        self.discriminator = Discriminator(c)
        self.encoder = LatentEncoder(c.in_channels, c.image_size, c.encoder_channels, c.latent_dim) \
            if c.encoder_channels else None
        self._collapsed_checks = 0  # consecutive low-diversity checks (not saved: a resume starts afresh)
        self._diversity: float | None = None

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # -- training -----------------------------------------------------------------------------
    def optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        return {"generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas, weight_decay=weight_decay),
                "discriminator": torch.optim.Adam([{"params": self.discriminator.parameters(),
                                                   "lr_scale": self.config.d_lr_scale}],
                                                  lr=lr * self.config.d_lr_scale, betas=betas, weight_decay=weight_decay),
                **({"encoder": torch.optim.Adam(self.encoder.parameters(), lr=lr, betas=betas)} if self.encoder else {})}

    def _labels(self, batch: dict) -> torch.Tensor | None:
        if not self.config.num_classes:
            return None
        if "label" not in batch:
            raise GmkitError("this GAN is class-conditional but the data has no labels")
        return batch["label"]

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "hinge":
            return -fake_logits.mean()
        return F.softplus(-fake_logits).mean()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both losses on a batch without stepping (for evaluation); training uses ``train_step``."""
        real = batch["image"]
        labels = self._labels(batch)
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        fake_logits = self.discriminator(self.generator(z, labels), labels)
        real_logits = self.discriminator(real, labels)
        d, g = self.d_loss(real_logits, fake_logits), self.g_loss(fake_logits)
        return {"loss": d + g, "d_loss": d, "g_loss": g}

    def _seen(self, x: torch.Tensor) -> torch.Tensor:
        """Images as the discriminator sees them in training: through DiffAugment when configured."""
        return diff_augment(x, self._augment) if self._augment else x

    grad_accum_ok = False  # alternating D and G updates on one batch: micro-batches would change the game

    def train_step(self, wrapped: nn.Module, batch: dict, opts: dict, step: int, grad_clip: float) -> dict[str, float]:
        """One discriminator update, then one generator update.

        ``wrapped`` (the module or its DDP wrapper) is not called: the two networks are called
        directly and gradients averaged by hand under torch.distributed (see the module docstring).
        A non-finite loss is returned before its optimizer steps, so the loop stops with good weights.
        """
        c = self.config
        G, D = self.generator, self.discriminator
        opt_g, opt_d = opts["generator"], opts["discriminator"]
        real = batch["image"]
        labels = self._labels(batch)
        n = real.shape[0]
        clip = grad_clip if grad_clip > 0 else float("inf")

        # Discriminator: real up, fake down.
        z = torch.randn(n, c.latent_dim, device=real.device)
        with torch.no_grad():
            fake = G(z, labels)
        r1_now = c.r1_gamma > 0 and step % c.r1_every == 0
        real_in = real.detach().requires_grad_(r1_now)
        real_logits = D(self._seen(real_in), labels)
        fake_logits = D(self._seen(fake), labels)
        d_loss = self.d_loss(real_logits, fake_logits)
        r1 = torch.zeros((), device=real.device)
        if r1_now:
            (grad,) = torch.autograd.grad(real_logits.sum(), real_in, create_graph=True)
            r1 = grad.float().pow(2).flatten(1).sum(1).mean()
            d_total = d_loss + 0.5 * c.r1_gamma * c.r1_every * r1
        else:
            d_total = d_loss
        if not torch.isfinite(d_total):
            return {"loss": float(d_total.detach()), "d_loss": float(d_loss.detach())}
        opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        _all_reduce_grads(D.parameters())
        d_norm = torch.nn.utils.clip_grad_norm_(D.parameters(), clip)
        opt_d.step()

        # Generator: make D call its images real. D's gradients are computed and discarded.
        z = torch.randn(n, c.latent_dim, device=real.device)
        gen_logits = D(self._seen(G(z, labels)), labels)
        g_loss = self.g_loss(gen_logits)
        if not torch.isfinite(g_loss):
            return {"loss": float(g_loss.detach()), "d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        _all_reduce_grads(G.parameters())
        g_norm = torch.nn.utils.clip_grad_norm_(G.parameters(), clip)
        opt_g.step()
        D.zero_grad(set_to_none=True)
        _broadcast_buffers(G)

        stats = {"loss": float(d_loss.detach() + g_loss.detach()), "d_loss": float(d_loss.detach()),
                 "g_loss": float(g_loss.detach()), "d_real": float(real_logits.detach().float().mean()),
                 "d_fake": float(fake_logits.detach().float().mean()), "d_grad_norm": float(d_norm),
                 "g_grad_norm": float(g_norm)}
        if c.r1_gamma > 0:
            stats["r1"] = float(r1.detach())
        if self.encoder is not None:  # E learns to undo G on G's own samples (no real data needed)
            _broadcast_buffers(G)
            stats["encoder_loss"] = encoder_step(self.encoder, G, opts["encoder"], n, c.latent_dim, labels, real.device)
            _broadcast_buffers(self.encoder)
        if c.diversity_every and (step + 1) % c.diversity_every == 0:
            self._check_diversity(real, step + 1, labels)
        if self._diversity is not None:
            stats["diversity"] = self._diversity
        return stats

    @torch.no_grad()
    def diversity(self, real: torch.Tensor, real_labels: torch.Tensor | None = None) -> float:
        """Mean pairwise distance of a fixed batch of generated images (seeds 0..B-1, eval mode)
        over that of the real batch: about 1 when the generator covers the data, near 0 when
        it has collapsed onto a few modes. Class-conditional, with the real batch's labels: the mean
        of that ratio within each class, since a generator can draw every class and yet only one
        image per class (it ignores z), which the ratio over mixed classes does not see."""
        c = self.config
        was_training = self.generator.training
        self.generator.eval()
        try:
            gens = [torch.Generator().manual_seed(i) for i in range(c.diversity_batch)]
            z = randn((c.diversity_batch, c.latent_dim), gens, real.device)
            labels = None
            if c.num_classes:
                labels = torch.arange(c.diversity_batch, device=real.device) % c.num_classes
            fake = self.generator(z, labels)
        finally:
            self.generator.train(was_training)
        if labels is not None and real_labels is not None:
            ratios = []
            for k in range(c.num_classes):
                fk, rk = fake[labels == k], real[real_labels == k]
                spread = mean_pairwise_distance(rk)  # 0 with fewer than two real images of class k
                if fk.shape[0] > 1 and spread > 1e-8:
                    ratios.append(mean_pairwise_distance(fk) / spread)
            if ratios:
                return sum(ratios) / len(ratios)
        return mean_pairwise_distance(fake) / max(mean_pairwise_distance(real), 1e-8)

    def _check_diversity(self, real: torch.Tensor, step: int, labels: torch.Tensor | None = None) -> None:
        c = self.config
        self._diversity = round(self.diversity(real, labels), 6)
        if not c.collapse_threshold or step < c.collapse_after:
            return
        if self._diversity < c.collapse_threshold:
            self._collapsed_checks += 1
        else:
            self._collapsed_checks = 0
        if self._collapsed_checks >= c.collapse_patience:
            raise StopTraining(
                f"mode collapse at step {step}: sample diversity {self._diversity:.3f} of the real data's has stayed "
                f"under collapse_threshold={c.collapse_threshold} for {c.collapse_patience} checks; training stopped "
                "and the last checkpoint in the run folder is kept. Try a lower --lr, --set r1_gamma=1, or "
                "--set loss=hinge; --set collapse_threshold=0 disables this check")

    # -- generation ---------------------------------------------------------------------------
    def _sample_labels(self, class_label, noise: list[torch.Generator], device) -> torch.Tensor | None:
        if class_label is None and self.num_classes:
            # Each image's class from its own generator, so image i depends on seed S+i alone.
            return torch.stack([torch.randint(self.num_classes, (), generator=g) for g in noise]).to(device)
        return self.class_labels(class_label, len(noise), device)

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], truncation: float | None = None, class_label: int | None = None,
               **_: Any) -> torch.Tensor:
        n = len(noise)
        device = self.device
        if truncation is not None:
            if not (truncation > 0 and math.isfinite(truncation)):
                raise OptionError("truncation", f"must be a positive number, got {truncation}")
            z = truncated_normal((n, self.config.latent_dim), noise, truncation, device)
        else:
            z = randn((n, self.config.latent_dim), noise, device)
        labels = self._sample_labels(class_label, noise, device)
        dtype = self.generator.fc.weight.dtype
        return self.generator(z.to(dtype), labels).float().clamp(-1, 1)
