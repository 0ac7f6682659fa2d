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

from ..diffusion import sampling
from ..diffusion.process import DiffusionProcess, ProcessConfig
from ..errors import GmkitError, OptionError
from ..nn.unet import UNet, UNetConfig
from .base import SAMPLE, STEPS, DataInfo, Family, SamplingPlan, TrainOption

UPSAMPLERS = ("bicubic", "nearest")


def _sr_unet() -> UNetConfig:
    # Local detail needs no global attention, and attention would tie the model to its training size.
    return UNetConfig(in_channels=6, out_channels=3, sample_size=32, block_out_channels=[32, 64, 64],
                      layers_per_block=1, attention_blocks=[], mid_attention=False, norm_groups=8)


@dataclass
class SRConfig(ProcessConfig):
    scale: int = 4  # upsampling factor per side
    image_size: int = 32  # training images (high resolution)
    in_channels: int = 3
    patch_size: int = 0  # > 0: train on random high-resolution crops of this size (0: whole images)
    upsample: str = "bicubic"  # how the low-res image reaches the output size: bicubic | nearest
    residual: bool = True  # diffuse high - upsampled(low) (SRDiff); False: the image itself (SR3)
    unet: UNetConfig = field(default_factory=_sr_unet)
    class_dropout: float = 0.0  # unused (the low-res image is the condition); older configs name it
    data_license: str = ""

def check_config(cfg: SRConfig) -> None:
    if not isinstance(cfg.scale, int) or cfg.scale < 2:
        raise OptionError("scale", f"must be an integer >= 2 (2 or 4 are usual), got {cfg.scale}")
    if cfg.upsample not in UPSAMPLERS:
        raise GmkitError(f"sr upsample must be {' or '.join(UPSAMPLERS)}, got {cfg.upsample!r}")
    if cfg.prediction_type != "epsilon":
        raise GmkitError("sr models predict epsilon (prediction_type=epsilon)")
    size = cfg.patch_size or cfg.image_size
    if size > cfg.image_size:
        raise GmkitError(f"patch_size {cfg.patch_size} is larger than the images ({cfg.image_size}); lower it or raise the image size")
    stride = cfg.scale * 2 ** (len(cfg.unet.block_out_channels) - 1)
    if size % cfg.scale or size % stride:
        raise GmkitError(f"sr trains on {size}x{size} {'crops' if cfg.patch_size else 'images'}, which must be a multiple "
                         f"of {stride} (the scale {cfg.scale} times the UNet's stride); change the image size or patch_size")


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


class SR(Family):
    name = "sr"
    Config = SRConfig
    capabilities = frozenset({SAMPLE, STEPS})
    sample_options = frozenset({"sampler", "steps", "eta", "image", "schedule", "snr"})
    preview_options = {"sampler": "ddim", "steps": 20}
    train_defaults = {"lr": 5e-4, "batch_size": 32, "ema_decay": 0.999, "preview": 8}
    default_sampler = "ddim"
    sweep_sampler = "ddim"
    class_conditioning = "never"
    train_options = {"scale": TrainOption("upsampling factor per side, e.g. 2 or 4", int, minimum=2, config_key="scale",
                                          applies_to="super-resolution models (sr)")}

    @classmethod
    def fit_config(cls, config: SRConfig, data: DataInfo, conditional: bool) -> SRConfig:
        """Channels and training size from the data; the UNet follows in ``__init__``."""
        if conditional:
            raise OptionError("conditional", "does not apply: sr is conditioned on the low-resolution image, not on classes")
        config = dataclasses.replace(config, image_size=data.size, in_channels=data.channels)
        check_config(config)
        return config

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None) -> SamplingPlan:
        return SamplingPlan(*sampling.plan_summary(self.process, sampler or self.default_sampler, steps))

    def __init__(self, config: SRConfig):
        check_config(config)
        c = config.in_channels
        unet = dataclasses.replace(config.unet, in_channels=2 * c, out_channels=c,
                                   sample_size=config.patch_size or config.image_size, num_classes=0)
        config = dataclasses.replace(config, unet=unet)
        super().__init__(config)
        self.process = DiffusionProcess.discrete(config)
        self.unet = UNet(config.unet)
        self._preview_low: torch.Tensor | None = None  # training previews upsample these

    @property
    def sample_shape(self):
        """What the sampler denoises at the training size (any size that fits the UNet samples too)."""
        return self.image_shape

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
        channels_last = torch.channels_last
        return self.process.loss(lambda x, t: self.unet(torch.cat([x, up], 1).contiguous(memory_format=channels_last), t), x0)

    # -- sampling -----------------------------------------------------------------------------
    def network(self, n: int, condition: torch.Tensor | None = None, class_label=None, guidance=None, **_: Any):
        """The UNet as ``net(x_t, c_noise)`` with the upsampled low-resolution image concatenated to x
        (SR3, section 2.4)."""
        for name, v in (("class_label", class_label), ("guidance", guidance)):
            if v is not None:
                raise OptionError(name, "is not taken by sr models: they are conditioned on the image alone")
        if condition is None:
            raise OptionError("image", "is needed: sr models upsample an image (e.g. small.png)")
        return sampling.unet_network(self.unet, concat=condition)

    def denoiser(self, n: int = 1, **options: Any):
        return self.process.denoiser(self.network(n, **options))

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], image: torch.Tensor | None = None, sampler: str | None = None,
               callback=None, **options: Any) -> torch.Tensor:
        """``scale`` times larger images of ``image`` (N or 1, C, h, w) in [-1, 1], one per generator."""
        for key in ("mask", "strength", "resample", "jump", "init"):
            if options.pop(key, None) is not None:
                raise OptionError(key, "is not taken by sr models: they upsample the whole image")
        if image is None:
            if self._preview_low is None:
                raise OptionError("image", "is needed: sr models upsample an image (e.g. small.png)")
            image = self._preview_low[torch.arange(len(noise)) % len(self._preview_low)]
        n = len(noise)
        low = image.to(self.device, torch.float32)
        if low.shape[0] not in (1, n):
            raise OptionError("image", f"holds {low.shape[0]} images for {n} samples")
        if low.shape[1] != self.config.in_channels:
            raise OptionError("image", f"has {low.shape[1]} channels, this model takes {self.config.in_channels}")
        h, w = low.shape[-2:]
        if (h, w) != self.low_res_size(h, w):
            raise OptionError("image", f"of {w}x{h} cannot be upsampled by this model; its sides must be multiples of "
                                       f"{self.low_res_size(1, 1)[0]}")
        up = upsample(low, self.config.scale, self.config.upsample).expand(n, -1, -1, -1)
        den = self.denoiser(n, condition=up, **options)
        x0 = sampling.sample(self.process, den, noise, tuple(up.shape[1:]), self.device, sampler or self.default_sampler,
                             callback=callback, **options)
        return ((x0 + up) if self.config.residual else x0).clamp(-1, 1)

    def encode(self, x: torch.Tensor, **_: Any):
        raise GmkitError("sr has no encoder (it upsamples: sample it with an image)")

    def bits_per_dim(self, *_, **__):
        raise GmkitError("sr models have no likelihood here (they are conditional)")
