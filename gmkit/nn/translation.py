"""Networks and losses of image-to-image translation (pix2pix, CycleGAN).

    UNetGenerator       Isola et al. 2017 ("pix2pix"), section 3.2.1 and appendix 6.1.1: an encoder of
                        4x4 stride-2 convolutions (LeakyReLU 0.2), a mirrored decoder of 4x4 stride-2
                        transposed convolutions (ReLU), each decoder layer also seeing the encoder layer
                        of its resolution (skip connections), tanh output. Fully convolutional: it takes
                        any height and width that are multiples of 2^depth.
    PatchDiscriminator  the PatchGAN of the same paper (section 3.2.2): one real/fake logit per
                        overlapping patch instead of per image. All layers but the last two halve the
                        resolution; the receptive field is 34 px with three layers, 70 px with four.
    ImagePool           Shrivastava et al. 2017, as CycleGAN uses it (Zhu et al. 2017, section 4): the
                        discriminator sees a mix of current and earlier generated images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import norm_layer

NORMS = ("instance", "batch", "group", "none")
GAN_LOSSES = ("lsgan", "vanilla", "hinge")


class UNetGenerator(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, channels: list[int], norm: str = "instance",
                 dropout: float = 0.0):
        super().__init__()
        self.depth = len(channels)
        self.down = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(channels):
            # No norm on the first layer (pix2pix, appendix 6.1.1) nor the innermost one: there the map
            # can be 1x1, where instance statistics are degenerate.
            plain = i == 0 or i == len(channels) - 1
            self.down.append(nn.Sequential(nn.Conv2d(prev, ch, 4, stride=2, padding=1),
                                           nn.Identity() if plain else norm_layer(norm, ch)))
            prev = ch
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            last = i == 0
            out = out_channels if last else channels[i - 1]
            width = channels[i] if i == len(channels) - 1 else 2 * channels[i]  # skip connections double it
            layers: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(width, out, 4, stride=2, padding=1)]
            if not last:
                layers.append(norm_layer(norm, out))
                if dropout > 0 and i >= len(channels) - 3:  # the innermost decoder layers (pix2pix: 3 of them)
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, layer in enumerate(self.down):
            h = layer(h if i == 0 else F.leaky_relu(h, 0.2))
            skips.append(h)
        skips.pop()  # the innermost activation feeds the decoder directly
        for i, layer in enumerate(self.up):
            if i:
                h = torch.cat([h, skips.pop()], 1)
            h = layer(h)
        return torch.tanh(h)


class PatchDiscriminator(nn.Module):
    """(N, C, H, W) -> (N, 1, h, w) logits, one per overlapping patch."""

    def __init__(self, in_channels: int, channels: list[int], norm: str = "instance"):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(channels):
            stride = 1 if i == len(channels) - 1 else 2
            layers.append(nn.Conv2d(prev, ch, 4, stride=stride, padding=1))
            if i:  # no norm on the first layer (pix2pix, appendix 6.1.2)
                layers.append(norm_layer(norm, ch))
            layers.append(nn.LeakyReLU(0.2))
            prev = ch
        layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gan_loss(logits: torch.Tensor, real: bool, kind: str, for_generator: bool = False) -> torch.Tensor:
    """The adversarial term on patch logits.

    lsgan    (D(x) - 1)^2 for real, D(x)^2 for fake (Mao et al. 2017; CycleGAN, section 4)
    vanilla  binary cross-entropy on the logits (Goodfellow et al. 2014; pix2pix, eq. 1)
    hinge    max(0, 1 - D) / max(0, 1 + D) for D; -D for G (Lim & Ye 2017)
    """
    logits = logits.float()
    if kind == "lsgan":
        return (logits - (1.0 if real else 0.0)).pow(2).mean()
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))
    if for_generator:
        return -logits.mean()
    return F.relu(1 - logits).mean() if real else F.relu(1 + logits).mean()


class ImagePool:
    """A buffer of up to ``size`` generated images. Each new image is, with probability 1/2 once the
    pool is full, swapped for a stored one (which the discriminator sees instead); otherwise it passes
    through. Random draws come from torch's global generator, which the training loop saves, so a
    resumed run makes the same choices."""

    def __init__(self, size: int):
        self.size = size
        self.images: torch.Tensor | None = None
        self.count = 0

    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return fakes
        fakes = fakes.detach()
        if self.images is None:
            self.images = torch.zeros((self.size, *fakes.shape[1:]), dtype=fakes.dtype, device=fakes.device)
        out = []
        for img in fakes:
            if self.count < self.size:
                self.images[self.count] = img
                self.count += 1
                out.append(img)
            elif float(torch.rand(())) < 0.5:
                j = int(torch.randint(self.size, ()))
                out.append(self.images[j].clone())
                self.images[j] = img
            else:
                out.append(img)
        return torch.stack(out)

    def state(self) -> dict[str, torch.Tensor]:
        if self.images is None:
            return {}
        return {"images": self.images[:self.count].clone()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        if "images" not in state or not len(state["images"]):
            self.images, self.count = None, 0
            return
        stored = state["images"]
        self.images = torch.zeros((self.size, *stored.shape[1:]), dtype=stored.dtype, device=stored.device)
        self.count = min(len(stored), self.size)
        self.images[:self.count] = stored[:self.count]
