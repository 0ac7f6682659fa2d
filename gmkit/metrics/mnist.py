"""The `mnist` extractor: gmkit's own frozen digit CNN, the network behind FD-gmkit-mnist.

The shipped weights were trained by ``train_extractor`` (fixed seed; the command that produced
them is in their metadata) and are checked against the sha256 recorded here before use, so a
figure named ``FD-gmkit-mnist`` always means these exact weights.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GmkitError

# name -> (file in gmkit/weights, sha256 of that file, data set, input size)
EXTRACTORS = {
    "mnist": ("extractor-mnist.safetensors", "058fe87f366528d3a044baee9dab2a4aee0b7534123bade724b77a7003b05dbe", "mnist", 28),
}


class DigitNet(nn.Module):
    """Two conv layers and a 128-d feature layer; the features feed the distances."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        feats = F.relu(self.fc(h.flatten(1)))
        return self.head(feats), feats


def extractor_path(name: str) -> Path:
    return Path(str(resources.files("gmkit") / "weights" / EXTRACTORS[name][0]))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_extractor(name: str = "mnist") -> DigitNet:
    from ..checkpoint import load_tensors

    if name not in EXTRACTORS:
        raise GmkitError(f"no feature extractor for {name!r} (available: {', '.join(EXTRACTORS)})")
    path = extractor_path(name)
    if not path.exists():
        raise GmkitError(f"feature extractor {path} is missing; reinstall gmkit")
    expected = EXTRACTORS[name][1]
    if _sha256(path) != expected:
        raise GmkitError(f"feature extractor {path} does not match its recorded sha256; reinstall gmkit")
    tensors, _ = load_tensors(path)
    net = DigitNet()
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    return net.eval().requires_grad_(False)


def prepare(images: torch.Tensor, size: int = 28) -> torch.Tensor:
    """Any (N, C, H, W) batch in [-1, 1] -> grey (N, 1, size, size), as the extractor was trained."""
    x = images.float()
    if x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


@torch.inference_mode()
def extract(net: DigitNet, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) for a batch of images, in chunks."""
    outs = [net(prepare(images[i:i + batch])) for i in range(0, len(images), batch)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def train_extractor(data: str = "mnist", epochs: int = 4, seed: int = 0) -> tuple[DigitNet, float]:
    """Train the extractor on the training split; returns it and its held-out accuracy."""
    from ..data import load_data
    from .reference import all_images

    torch.manual_seed(seed)
    train, held = load_data(data, "train"), load_data(data, "test")
    net = DigitNet(train.num_classes)
    images, held_images = all_images(train), all_images(held)  # 5,000 MNIST images: small as floats
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train), 64):
            idx = perm[i:i + 64]
            # Mild noise and shifts, so the features are not thrown by small generator artefacts.
            x = images[idx] + 0.1 * torch.randn(len(idx), 1, 28, 28, generator=g)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            x = torch.roll(x, (dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(x)[0], train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    acc = float((extract(net, held_images)[0].argmax(1) == held.labels).float().mean())
    return net, acc
