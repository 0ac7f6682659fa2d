"""AugVAE: a class-conditional VAE trained on augmented views.

The encoder sees an augmented view of each training image (random rotation, scaling and shift
in one affine warp, plus brightness/contrast jitter); the decoder must reconstruct the *clean*
image. Both are conditioned on the class label (CVAE, Sohn et al. 2015), so the latent carries
style and the label carries identity; reconstructing the clean image from an augmented view makes
the latent invariant to the nuisance transformations (the idea of AAVAE, Falcon et al. 2021, who
replace the KL term's role with augmentation). ``sample --class k`` draws z ~ N(0, I) and decodes
it with label k: more data of a chosen class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
import torch.nn.functional as F

from ..errors import GmkitError
from .base import CLASS_COND, DECODE, ENCODE, LIKELIHOOD, SAMPLE
from .vae import VAE, VAEConfig


@dataclass
class AugVAEConfig(VAEConfig):
    num_classes: int = 10
    rotate: float = 12.0  # max rotation, degrees
    scale: float = 0.1  # max relative zoom in or out
    shift: float = 2.0  # max shift, pixels
    brightness: float = 0.1  # max brightness change (images in [-1, 1])
    contrast: float = 0.2  # max relative contrast change


def augment(x: torch.Tensor, cfg: AugVAEConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random affine warp and colour jitter per image; background pixels come from the border."""
    n, _, h, w = x.shape

    def u(*shape):  # uniform in [-1, 1]
        return (torch.rand(shape, generator=generator) * 2 - 1).to(x.device)

    angle = u(n) * math.radians(cfg.rotate)
    scale = 1 + u(n) * cfg.scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    tx, ty = u(n) * cfg.shift * 2 / w, u(n) * cfg.shift * 2 / h  # normalized [-1, 1] coordinates
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    c = (1 + u(n) * cfg.contrast).view(n, 1, 1, 1).to(x.dtype)
    b = (u(n) * cfg.brightness).view(n, 1, 1, 1).to(x.dtype)
    return ((y - mean) * c + mean + b).clamp(-1, 1)


class AugVAE(VAE):
    name = "augvae"
    Config = AugVAEConfig
    capabilities = frozenset({SAMPLE, ENCODE, DECODE, LIKELIHOOD, CLASS_COND})
    sample_options = frozenset({"class_label"})
    # ``gmkit train`` sets num_classes from the data whether or not --conditional is given.
    class_conditioning = "always"

    def __init__(self, config: AugVAEConfig):
        if config.num_classes < 1:
            raise GmkitError("augvae is class-conditional: num_classes must be >= 1 (train on labelled data)")
        super().__init__(config)

    def training_views(self, batch):
        x = batch["image"]
        if "label" not in batch:
            raise GmkitError("augvae trains on labelled data (a bundled data set, or class subfolders)")
        return (augment(x, self.config) if self.training else x), x
