"""Super-resolution by conditional diffusion (Saharia et al. 2021, "Image Super-Resolution via
Iterative Refinement", SR3).

The low-resolution image is upsampled (bicubic or nearest) to the output size and concatenated to
the noisy input of the shared UNet, which then denoises the high-resolution image (SR3, section 2.4).
By default the diffused quantity is the residual ``high - upsampled(low)`` rather than the image
itself (as SRDiff, Li et al. 2022, does): the network only has to learn the missing detail, which
trains several times faster on a CPU. ``residual=False`` is SR3 exactly.

The network is convolutional, so a model trained on ``patch_size`` crops upsamples images of any
size: ``gmkit sample sr --image small.png`` returns an image ``scale`` times larger per side.
The low-resolution training inputs are made by ``degrade``: bicubic downsampling with
antialiasing, what Pillow's resize does to a picture.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import GmkitError
from ..nn.unet import UNetConfig
from .base import SAMPLE, STEPS, DataInfo, TrainOption
from .diffusion import Diffusion

UPSAMPLERS = ("bicubic", "nearest")


def _sr_unet() -> UNetConfig:
    # Local detail needs no global attention, and attention would tie the model to its training size.
    return UNetConfig(in_channels=6, out_channels=3, sample_size=32, block_out_channels=[32, 64, 64],
                      layers_per_block=1, attention_blocks=[], mid_attention=False, norm_groups=8)


@dataclass
class SRConfig:
    scale: int = 4  # upsampling factor per side
    image_size: int = 32  # training images (high resolution)
    in_channels: int = 3
    patch_size: int = 0  # > 0: train on random high-resolution crops of this size (0: whole images)
    upsample: str = "bicubic"  # how the low-res image reaches the output size: bicubic | nearest
    residual: bool = True  # diffuse high - upsampled(low) (SRDiff); False: the image itself (SR3)
    unet: UNetConfig = field(default_factory=_sr_unet)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    timestep_spacing: str = "trailing"
    steps_offset: int = 0
    class_dropout: float = 0.0  # unused: the low-res image is the condition
    data_license: str = ""

def check_config(cfg: SRConfig) -> None:
    if not isinstance(cfg.scale, int) or cfg.scale < 2:
        raise GmkitError(f"--scale must be an integer >= 2 (2 or 4 are usual), got {cfg.scale}")
    if cfg.upsample not in UPSAMPLERS:
        raise GmkitError(f"sr upsample must be {' or '.join(UPSAMPLERS)}, got {cfg.upsample!r}")
    if cfg.prediction_type != "epsilon":
        raise GmkitError("sr models predict epsilon (prediction_type=epsilon)")
    size = cfg.patch_size or cfg.image_size
    if size > cfg.image_size:
        raise GmkitError(f"patch_size {cfg.patch_size} is larger than the images ({cfg.image_size}); lower it or raise --image-size")
    stride = cfg.scale * 2 ** (len(cfg.unet.block_out_channels) - 1)
    if size % cfg.scale or size % stride:
        raise GmkitError(f"sr trains on {size}x{size} {'crops' if cfg.patch_size else 'images'}, which must be a multiple "
                         f"of {stride} (the scale {cfg.scale} times the UNet's stride); change --image-size or patch_size")


def degrade(high: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-resolution image: bicubic downsampling with antialiasing (as Pillow resizes)."""
    h, w = high.shape[-2:]
    return F.interpolate(high, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


def upsample(low: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """The low-resolution image brought to the output size: the baseline, and the UNet's condition."""
    h, w = low.shape[-2:]
    if mode == "nearest":
        return F.interpolate(low, size=(h * scale, w * scale), mode="nearest")
    return F.interpolate(low, size=(h * scale, w * scale), mode="bicubic", align_corners=False).clamp(-1, 1)


def random_crops(x: torch.Tensor, size: int, multiple: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per image, at offsets that are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    if size >= h and size >= w:
        return x
    ny, nx = (h - size) // multiple + 1, (w - size) // multiple + 1
    ys = torch.randint(0, ny, (x.shape[0],), generator=generator) * multiple
    xs = torch.randint(0, nx, (x.shape[0],), generator=generator) * multiple
    return torch.stack([x[i, :, y:y + size, x_:x_ + size] for i, (y, x_) in enumerate(zip(ys.tolist(), xs.tolist()))])


class SR(Diffusion):
    name = "sr"
    Config = SRConfig
    capabilities = frozenset({SAMPLE, STEPS})
    sample_options = frozenset({"sampler", "steps", "eta", "image", "schedule", "snr"})
    preview_options = {"sampler": "ddim", "steps": 20}
    train_defaults = {"lr": 5e-4, "batch_size": 32, "ema_decay": 0.999, "preview": 8}
    default_sampler = "ddim"
    class_conditioning = "never"
    train_options = {"scale": TrainOption("upsampling factor per side, e.g. 2 or 4", int, minimum=2, config_key="scale",
                                          applies_to="super-resolution models (sr)")}

    @classmethod
    def fit_config(cls, config: SRConfig, data: DataInfo, conditional: bool) -> SRConfig:
        """Channels and training size from the data; the UNet follows in ``__init__``."""
        if conditional:
            raise GmkitError("sr is conditioned on the low-resolution image, not on classes; drop --conditional")
        config = dataclasses.replace(config, image_size=data.size, in_channels=data.channels)
        check_config(config)
        return config

    def __init__(self, config: SRConfig):
        check_config(config)
        c = config.in_channels
        unet = dataclasses.replace(config.unet, in_channels=2 * c, out_channels=c,
                                   sample_size=config.patch_size or config.image_size, num_classes=0)
        config = dataclasses.replace(config, unet=unet)
        super().__init__(config)
        self._out_shape: tuple[int, int, int] | None = None
        self._preview_low: torch.Tensor | None = None

    @property
    def image_shape(self):
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    @property
    def sample_shape(self):
        """The output being sampled: set from the low-resolution image for the call in progress."""
        return self._out_shape or self.image_shape

    @property
    def stride(self) -> int:
        """Output sizes must be multiples of this (the UNet halves the resolution at each level)."""
        return 2 ** (len(self.config.unet.block_out_channels) - 1)

    max_output = 1024  # larger inputs are shrunk first (and said so): the output would not fit in memory

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        shrink = max(h, w) * self.config.scale / self.max_output
        if shrink > 1:
            h, w = max(1, int(h / shrink)), max(1, int(w / shrink))
        return self.low_res_size(h, w)

    def low_res_size(self, h: int, w: int) -> tuple[int, int]:
        """The nearest input size (h, w) this model can upsample: its output must fit the UNet's stride."""
        s = self.stride
        k = s // math.gcd(s, self.config.scale)  # input sides must be multiples of k
        return max(k, int(h / k + 0.5) * k), max(k, int(w / k + 0.5) * k)

    # -- training -----------------------------------------------------------------------------
    def prepare_training(self, data, device, quiet: bool = False) -> None:
        """Keep a few training images, downsampled, for the preview grids of each checkpoint."""
        self._preview_low = degrade(data.images(8).to(device, torch.float32), self.config.scale)

    def pair(self, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target x_0, condition) for high-resolution images: the target is the residual by default."""
        up = upsample(degrade(high, self.config.scale), self.config.scale, self.config.upsample)
        return (high - up if self.config.residual else high), up

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        high = batch["image"]
        if self.config.patch_size:
            high = random_crops(high, self.config.patch_size, self.config.scale)
        x0, up = self.pair(high)
        b = x0.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        a = self.alphas_cumprod.to(x0.device, torch.float32)[t].view(b, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # q(x_t | x_0), Ho et al. 2020 eq. 4
        pred = self.unet(torch.cat([xt, up], 1).contiguous(memory_format=torch.channels_last), t)
        return {"loss": F.mse_loss(pred.float(), eps)}

    # -- sampling -----------------------------------------------------------------------------
    def conditioned_eps(self, n: int, device, class_label=None, guidance=None, condition=None, **_: Any):
        """eps(x, t) with the upsampled low-resolution image concatenated to x (SR3, section 2.4)."""
        if class_label is not None or guidance is not None:
            raise GmkitError("sr models are conditioned on --image only (no --class or --guidance)")
        if condition is None:
            raise GmkitError("sr models upsample an image: give --image small.png")
        dtype = next(self.unet.parameters()).dtype

        def eps(x: torch.Tensor, t) -> torch.Tensor:
            if torch.is_tensor(t):  # fractional timesteps, one per sample (the score-SDE adapter)
                t_vec = t.to(x.device, torch.float32)
            else:
                t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            c = condition if condition.shape[0] == x.shape[0] else condition.repeat(x.shape[0] // condition.shape[0], 1, 1, 1)
            h = torch.cat([x, c.to(x.dtype)], 1).to(dtype).contiguous(memory_format=torch.channels_last)
            return self.unet(h, t_vec).float()

        return eps

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], image: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """``scale`` times larger images of ``image`` (N or 1, C, h, w) in [-1, 1], one per generator."""
        for key in ("mask", "strength"):
            if options.pop(key, None) is not None:
                raise GmkitError(f"sr models do not take --{key}")
        if image is None:
            if self._preview_low is None:
                raise GmkitError("sr models upsample an image: give --image small.png")
            image = self._preview_low[torch.arange(len(noise)) % len(self._preview_low)]
        n = len(noise)
        low = image.to(self.device, torch.float32)
        if low.shape[0] not in (1, n):
            raise GmkitError(f"sr: {low.shape[0]} images for {n} samples")
        if low.shape[1] != self.config.in_channels:
            raise GmkitError(f"sr: the image has {low.shape[1]} channels, this model takes {self.config.in_channels}")
        h, w = low.shape[-2:]
        if (h, w) != self.low_res_size(h, w):
            raise GmkitError(f"sr: a {w}x{h} image cannot be upsampled by this model; its sides must be multiples of "
                             f"{self.low_res_size(1, 1)[0]}")
        up = upsample(low, self.config.scale, self.config.upsample).expand(n, -1, -1, -1)
        options.setdefault("sampler", "ddim")
        self._out_shape = tuple(up.shape[1:])
        try:
            x0 = super().sample(noise, condition=up, **options)
        finally:
            self._out_shape = None
        return ((x0 + up) if self.config.residual else x0).clamp(-1, 1)

    def encode(self, x: torch.Tensor, **_: Any):
        raise GmkitError("sr has no encoder (it upsamples: gmkit sample sr --image small.png)")

    def bits_per_dim(self, *_, **__):
        raise GmkitError("sr models have no likelihood here (they are conditional)")
