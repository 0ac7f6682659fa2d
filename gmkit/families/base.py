"""The small interface every generative family implements, so one CLI and one training loop serve all.

A family is an ``nn.Module`` built from a config dataclass. It declares its capabilities so the
CLI can refuse politely ("flow cannot take --prompt") instead of crashing. Training goes
through ``forward(batch) -> {"loss": ..., other logged scalars}``, so the loop (and DDP) can call
the module itself; families that need more than one optimizer (GANs) override ``optimizers`` and
``train_step``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import GmkitError

# Capability names the CLI checks before calling into a family.
SAMPLE, ENCODE, DECODE, LIKELIHOOD, CLASS_COND, STEPS = "sample", "encode", "decode", "likelihood", "class", "steps"


class Family(nn.Module):
    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE})
    # Sample-time options this family understands, beyond n / seed / batch size.
    sample_options: ClassVar[frozenset[str]] = frozenset()
    # Training-loop settings this family wants instead of TrainConfig's defaults (e.g. a GAN's
    # lr=2e-4); ``gmkit train`` applies them to fresh runs, below --lr / --set train.key=value.
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config):
        super().__init__()
        self.config = config

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training losses for a batch: must include ``loss``; other entries are logged."""
        raise NotImplementedError

    def prepare_training(self, data, device: torch.device, quiet: bool = False) -> None:
        """Called once before training: a family may precompute per-image work here."""

    def optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)}

    def train_step(self, wrapped: nn.Module, batch: dict, opts: dict, step: int, grad_clip: float) -> dict[str, float]:
        """One optimizer step. ``wrapped`` is this module, or its DDP wrapper: call it, not ``self``.

        A non-finite loss is returned without stepping, so the weights stay good.
        """
        opt = opts["model"]
        losses = wrapped(batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            return {"loss": float(loss.detach())}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        opt.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": float(norm)}

    # -- generation ---------------------------------------------------------------------------
    # Options for the quick sample grid written at each training checkpoint.
    preview_options: ClassVar[dict] = {}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images; flat configs name ``in_channels`` and ``image_size``."""
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    @property
    def dims(self) -> int:
        """Numbers per image (C * H * W): the denominator of bits/dim."""
        c, h, w = self.image_shape
        return c * h * w

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an ``--image`` of this size is resized to: the model's resolution here;
        size-agnostic models (super-resolution) return the nearest size they can take."""
        _, h, w = self.image_shape
        return h, w

    def sample(self, noise: list[torch.Generator], **options: Any) -> torch.Tensor:
        """One image per generator, in [-1, 1], shape (N, C, H, W)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor, **options: Any) -> dict[str, torch.Tensor]:
        raise GmkitError(f"{self.name} has no encoder")

    def decode(self, z: torch.Tensor, **options: Any) -> torch.Tensor:
        raise GmkitError(f"{self.name} has no decoder")

    def latent_description(self) -> dict[str, Any] | None:
        """What this family's latent space is, for ``gmkit compare``: e.g. ``{"kind": "continuous",
        "shape": [16], "text": "continuous Gaussian, 16-d"}``. None (the default) lets compare infer
        it from the config and from what ``encode`` returns."""
        return None

    def check_latents(self, z: torch.Tensor, dim: int) -> None:
        """Refuse a latent matrix that is not (N, dim), is empty or holds NaN/inf, naming the problem."""
        if z.ndim != 2 or z.shape[1] != dim:
            raise GmkitError(f"{self.name} decode: latents of shape {tuple(z.shape)}, this model needs (N, {dim})")
        if z.shape[0] == 0:
            raise GmkitError(f"{self.name} decode: no latents (the tensor is empty)")
        if not bool(torch.isfinite(z).all()):
            raise GmkitError(f"{self.name} decode: the latents hold NaN or infinite values")

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse sample options this family cannot use, naming them."""
        unknown = sorted(k for k, v in options.items() if v is not None and k not in self.sample_options)
        if unknown:
            opts = ", ".join("--" + k.replace("_", "-") for k in unknown)
            if "image" in unknown:  # say which families edit or upsample images
                from . import family_classes

                can = sorted(name for name, cls in family_classes().items() if "image" in cls.sample_options)
                raise GmkitError(f"{self.name} models do not take {opts} (image editing and upsampling: {', '.join(can)})")
            raise GmkitError(f"{self.name} models do not take {opts}")
