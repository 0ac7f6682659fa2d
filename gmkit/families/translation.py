"""What the translation families (pix2pix, CycleGAN) share: image in, image out.

A translator is trained on batches holding ``source`` (domain A, the input) beside ``image`` (domain
B, the target), see ``gmkit/data/paired.py``, with two optimizers (generators, discriminators) as the
GAN family. Sampling maps an ``image`` through a generator; there is no noise, so the per-image
generators only set how many results come back. The networks are fully convolutional: any height and
width that are multiples of ``multiple`` work, whatever size the model was trained at.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import GmkitError, OptionError
from ..nn.translation import GAN_LOSSES, NORMS
from .base import SAMPLE, Family, TrainSetup
from .gan import _all_reduce_grads


@dataclass
class TranslatorConfig:
    """The settings pix2pix and CycleGAN share (each adds its loss weights)."""
    in_channels: int = 3  # channels of the images it makes (the targets, domain B)
    source_channels: int = 3  # channels of the images it takes (the inputs, domain A)
    image_size: int = 64  # training resolution; any multiple of 2^len(g_channels) translates
    g_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128, 128])  # U-Net: one /2 per entry
    d_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # PatchGAN: /2 for all but the last
    norm: str = "instance"  # instance | batch | group | none
    dropout: float = 0.0  # dropout in the innermost decoder layers while training (pix2pix: 0.5)
    gan_loss: str = "lsgan"  # lsgan | vanilla | hinge
    jitter: int = 4  # random jitter: resize up by this many pixels, crop back (0 = off)
    flip: bool = True  # random horizontal mirror (the same for both images of a pair)
    beta1: float = 0.5  # Adam betas of both optimizers
    beta2: float = 0.999


def check_config(c: TranslatorConfig) -> None:
    if c.norm not in NORMS:
        raise GmkitError(f"norm must be one of {', '.join(NORMS)}, got {c.norm!r}")
    if c.gan_loss not in GAN_LOSSES:
        raise GmkitError(f"gan_loss must be one of {', '.join(GAN_LOSSES)}, got {c.gan_loss!r}")
    if not c.g_channels or len(c.d_channels) < 2:
        raise GmkitError("g_channels needs at least one entry and d_channels at least two")
    k = 2 ** len(c.g_channels)
    if c.image_size % k:
        raise GmkitError(f"image_size {c.image_size} must be a multiple of {k} (one /2 per entry of g_channels); "
                         "change image_size or g_channels")
    if c.image_size < 2 ** (len(c.d_channels) + 1):
        raise GmkitError(f"image_size {c.image_size} is too small for a PatchGAN with {len(c.d_channels)} layers")
    if c.jitter < 0 or not 0 <= c.dropout < 1:
        raise GmkitError("jitter must be >= 0 and dropout in [0, 1)")


def check_channels(cfg, ds) -> tuple[int, int, int]:
    """(source channels, target channels, size) of translation data; says what is wrong with it."""
    if "source" not in ds.image_columns:
        raise GmkitError("translation models train on image pairs or two domains (see gmkit/data/paired.py); "
                         "this data has single images")
    (src, _, _), (tgt, _, size) = ds.shapes["source"], ds.shapes["image"]
    return src, tgt, size


def step_optimizer(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter], clip: float) -> float:
    """Backward, average over processes, clip, step; returns the gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    _all_reduce_grads(params)
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    opt.step()
    return float(norm)


class Translator(Family):
    capabilities = frozenset({SAMPLE})
    sample_options = frozenset({"image"})
    # Adam 2e-4, betas (0.5, 0.999), no warm-up or clipping (pix2pix and CycleGAN, section 4 / appendix).
    train_defaults: ClassVar[dict] = {"lr": 2e-4, "warmup": 0, "grad_clip": 0.0, "ema_decay": 0.999,
                                      "batch_size": 16, "preview": 8}
    data_kind: ClassVar[str] = "pairs"  # what training loads: "pairs" or "unpaired" (gmkit/data/paired.py)
    default_data = "openmoji-lines"
    max_side = 1024  # larger inputs are shrunk first (and said so)

    def __init__(self, config):
        super().__init__(config)
        self._preview: dict[str, torch.Tensor] = {}

    @classmethod
    def load_training_data(cls, spec: str, opts, options: dict[str, Any]):
        from ..data.paired import load_translation_data

        return load_translation_data(cls.data_kind, spec, options.get("data_b"), opts)

    @classmethod
    def build_for_training(cls, config, data, setup: TrainSetup) -> tuple["Translator", dict]:
        """The config fitted to the data: each side's channels and the training size."""
        if setup.conditional:
            raise OptionError("conditional", "translation models are conditioned on their input image, not on classes; "
                                             "drop {conditional}")
        src, tgt, size = check_channels(config, data)
        config = replace(config, source_channels=src, in_channels=tgt, image_size=size)
        check_config(config)
        torch.manual_seed(setup.seed)  # identical initial weights on every rank
        return cls(config), {}

    def generator_for(self, direction: str | None) -> nn.Module:
        raise NotImplementedError

    def input_channels(self, direction: str | None = None) -> int:
        return self.config.source_channels

    @property
    def multiple(self) -> int:
        return self.generator_for(None).multiple

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """The nearest size the generator takes: sides rounded to multiples of ``multiple``."""
        shrink = max(h, w) / self.max_side
        if shrink > 1:
            h, w = max(1, int(h / shrink)), max(1, int(w / shrink))
        k = self.multiple
        return max(k, int(h / k + 0.5) * k), max(k, int(w / k + 0.5) * k)

    def optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        return {"generator": torch.optim.Adam(self.generator_params(), lr=lr, betas=betas, weight_decay=weight_decay),
                "discriminator": torch.optim.Adam(self.discriminator_params(), lr=lr, betas=betas,
                                                  weight_decay=weight_decay)}

    def generator_params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def discriminator_params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def prepare_training(self, data, device, quiet: bool = False) -> None:
        """Check the data against the model (a resumed run may be given other data), and keep a few
        training inputs of each domain for the preview grid of each checkpoint."""
        c = self.config
        src, tgt, size = check_channels(c, data)
        if (src, tgt) != (c.source_channels, c.in_channels):
            raise GmkitError(f"the data pairs {src}-channel inputs with {tgt}-channel targets; this {self.name} model "
                             f"maps {c.source_channels}-channel images to {c.in_channels}-channel ones")
        if size % self.multiple:
            raise GmkitError(f"training images of {size}x{size}: sides must be multiples of {self.multiple} for this model")
        first = data.tensors(8)
        self._preview = {"a2b": first["source"].to(device, torch.float32), "b2a": first["image"].to(device, torch.float32)}

    def check_image(self, x: torch.Tensor, direction: str | None) -> None:
        want = self.input_channels(direction)
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[0] == 0:
            raise OptionError("image", f"must be a batch of images (N, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
        if x.shape[1] != want:
            raise OptionError("image", f"has {x.shape[1]} channel(s); this {self.name} model translates "
                              f"{want}-channel images{' (' + direction + ')' if direction else ''}")
        h, w = x.shape[-2:]
        if (h, w) != self.input_size(h, w) or max(h, w) > self.max_side:
            k = self.multiple
            raise OptionError("image", f"is {w}x{h}; this model takes sides that are multiples of {k} "
                              f"(up to {self.max_side}), e.g. {self.input_size(h, w)[1]}x{self.input_size(h, w)[0]}")
        if not bool(torch.isfinite(x).all()):
            raise OptionError("image", "holds NaN or infinite values")

    @torch.inference_mode()
    def translate(self, x: torch.Tensor, direction: str | None = None) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] through the generator of ``direction``."""
        self.check_image(x, direction)
        g = self.generator_for(direction)
        dtype = next(g.parameters()).dtype
        return g(x.to(self.device, dtype).contiguous(memory_format=torch.channels_last)).float().clamp(-1, 1)

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], image: torch.Tensor | None = None, direction: str | None = None,
               **options: Any) -> torch.Tensor:
        """The translation of ``image`` (1 or N images) once per generator; without an image (a training
        preview), that of a few training inputs."""
        for key, value in options.items():
            if value is not None and key not in ("callback",):
                raise OptionError(key, f"{{{key}}} does not apply to {self.name} models (they translate {{image}})")
        n = len(noise)
        if image is None:
            if not self._preview:
                raise OptionError("image", f"is needed: {self.name} models translate an image")
            pool = self._preview["b2a" if direction == "b2a" else "a2b"]
            image = pool[torch.arange(n) % len(pool)]
        if image.shape[0] not in (1, n):
            raise OptionError("image", f"holds {image.shape[0]} images for {n} results")
        out = self.translate(image, direction)
        return out.expand(n, -1, -1, -1).clone() if out.shape[0] != n else out
