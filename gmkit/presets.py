"""Model and training presets by resolution, for the pixel-space UNet families (ddpm/ddim, score).

``--preset NAME``, or automatically when ``--image-size`` is 32, 64, 128 or 256: the full preset on
a GPU, the ``-cpu`` one on a CPU. Channels follow the data (RGB or grey). A preset sets the UNet's
shape and the training recipe; ``--set`` and the flags still override any of it.

- ``cifar10`` (= ``32``): the DDPM paper's CIFAR-10 model (Ho et al. 2020, appendix B): 128 base
  channels, multipliers (1, 2, 2, 2), two residual blocks per level, self-attention at 16x16,
  dropout 0.1: 35.7M parameters; lr 2e-4, batch 128, 5000 warm-up steps, EMA 0.9999.
- ``256``: the paper's 256x256 (LSUN, CelebA-HQ) layout, (1, 1, 2, 2, 4, 4): 113.7M parameters.
- ``64``, ``128``: in between (attention at 16x16 and 8x8), 74M and 77M parameters.
- ``*-cpu``: 2.7M-4.8M parameters, one residual block per level, attention only at the lowest
  resolution: something a laptop trains in hours, not weeks.
"""

from __future__ import annotations

import dataclasses

from .errors import OptionError

_GPU_TRAIN = {"lr": 2e-4, "batch_size": 128, "warmup": 5000, "ema_decay": 0.9999, "grad_clip": 1.0}
_CPU_TRAIN = {"lr": 5e-4, "batch_size": 32, "warmup": 500, "ema_decay": 0.999}

# name: (image size, UNet fields, training settings)
PRESETS: dict[str, tuple[int, dict, dict]] = {
    "cifar10": (32, dict(block_out_channels=[128, 256, 256, 256], layers_per_block=2, attention_blocks=[1],
                         head_dim=256, norm_groups=32, dropout=0.1), _GPU_TRAIN),
    "64": (64, dict(block_out_channels=[128, 256, 256, 512], layers_per_block=2, attention_blocks=[2, 3],
                    head_dim=64, norm_groups=32, dropout=0.1), _GPU_TRAIN),
    "128": (128, dict(block_out_channels=[128, 128, 256, 256, 512], layers_per_block=2, attention_blocks=[3, 4],
                      head_dim=64, norm_groups=32, dropout=0.1), {**_GPU_TRAIN, "batch_size": 64}),
    "256": (256, dict(block_out_channels=[128, 128, 256, 256, 512, 512], layers_per_block=2, attention_blocks=[4],
                      head_dim=64, norm_groups=32, dropout=0.0), {**_GPU_TRAIN, "lr": 2e-5, "batch_size": 64}),
    "32-cpu": (32, dict(block_out_channels=[32, 64, 128], layers_per_block=1, attention_blocks=[2], head_dim=32,
                        norm_groups=8, dropout=0.0), _CPU_TRAIN),
    "64-cpu": (64, dict(block_out_channels=[32, 64, 128, 128], layers_per_block=1, attention_blocks=[3],
                        head_dim=32, norm_groups=8, dropout=0.0), _CPU_TRAIN),
    "128-cpu": (128, dict(block_out_channels=[32, 64, 64, 128, 128], layers_per_block=1, attention_blocks=[4],
                          head_dim=32, norm_groups=8, dropout=0.0), {**_CPU_TRAIN, "batch_size": 16}),
    "256-cpu": (256, dict(block_out_channels=[32, 32, 64, 64, 128, 128], layers_per_block=1, attention_blocks=[5],
                          head_dim=32, norm_groups=8, dropout=0.0), {**_CPU_TRAIN, "batch_size": 8}),
}
ALIASES = {"32": "cifar10", "ddpm-cifar10": "cifar10"}


def preset_names() -> list[str]:
    return sorted(PRESETS) + sorted(ALIASES)


PIXEL_UNET_FAMILIES = ("ddpm", "score")  # ldm and sr size their UNets from the autoencoder / the scale


def takes_presets(family) -> bool:
    """Whether presets shape this family's model (a family class)."""
    return family.name in PIXEL_UNET_FAMILIES


def auto_preset(image_size: int | None, device_type: str) -> str | None:
    """The preset ``--image-size`` implies on this device, or None."""
    if image_size not in (32, 64, 128, 256):
        return None
    if device_type == "cpu":
        return f"{image_size}-cpu"
    return "cifar10" if image_size == 32 else str(image_size)


def apply_preset(name: str, family, cfg, image_size: int | None):
    """(``cfg`` of ``family`` with the preset's UNet, the preset's training settings, its image size)."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise OptionError("preset", f"must be one of {', '.join(preset_names())}, got {name!r}")
    if not takes_presets(family):
        raise OptionError("preset", f"{{preset}} {name}: presets shape pixel-space UNets (ddpm, ddim, score); "
                                    f"{family.name} has its own configuration")
    size, unet, train = PRESETS[key]
    if image_size is not None and image_size != size:
        raise OptionError("preset", f"{{preset}} {name} is for {size} px images, not {image_size} ({{image_size}})")
    return dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, **unet)), dict(train), size
