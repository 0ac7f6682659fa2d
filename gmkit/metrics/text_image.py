"""Prompt adherence without CLIP: a small image encoder trained contrastively against the frozen
text encoder of gmkit's LDM, on the same captioned data (the recipe of CLIP, Radford et al. 2021,
at toy scale). It is *not* CLIP and its numbers are not CLIP scores: it only knows the OpenMoji
catalogue. We call its figure TIS (text-image similarity, OpenMoji).

    similarities(...)   (N images, M prompts) cosine similarities
    adherence(...)      mean similarity of each image with its own prompt (``tis``), and the share of
                        images whose own prompt is the most similar of the distinct prompts
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GmkitError

WEIGHTS = "tis-openmoji.safetensors"


class ImageTower(nn.Module):
    """32x32 RGB -> unit vector: four conv stages (16, 8, 4, 4 px), global average pool, linear projection."""

    def __init__(self, dim: int = 256, width: int = 32):
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        prev = 3
        for i, ch in enumerate([w, 2 * w, 4 * w, 4 * w]):
            layers += [nn.Conv2d(prev, ch, 3, stride=2 if i < 3 else 1, padding=1), nn.GroupNorm(8, ch), nn.SiLU(),
                       nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(8, ch), nn.SiLU()]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(prev, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 32 or x.shape[-2] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return F.normalize(self.proj(self.features(x).mean((2, 3))), dim=-1)


class TextImageScorer(nn.Module):
    """Image tower + a linear head on the frozen text encoder's sentence embedding, in one shared space."""

    def __init__(self, dim: int = 256, text_dim: int = 384):
        super().__init__()
        self.image = ImageTower(dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # ln(1 / 0.07), CLIP's start

    def embed_text(self, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(sentence), dim=-1)

    def loss(self, images: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch (each image's own caption is the positive)."""
        i, t = self.image(images), self.embed_text(sentences)
        logits = self.logit_scale.exp().clamp(max=100) * i @ t.T
        target = torch.arange(len(i), device=i.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def load_scorer(path: str | Path | None = None) -> TextImageScorer:
    from ..checkpoint import load_tensors

    path = Path(path) if path else Path(str(resources.files("gmkit") / "weights" / WEIGHTS))
    if not path.exists():
        raise GmkitError(f"{path}: the text-image scorer weights are missing; train them with "
                         "benchmarks/train_text_image_scorer.py")
    state, _ = load_tensors(path)
    model = TextImageScorer()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def similarities(scorer: TextImageScorer, text_encoder, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N images, M prompts) cosine similarities."""
    img = torch.cat([scorer.image(images[i:i + 256].float()) for i in range(0, len(images), 256)])
    txt = scorer.embed_text(text_encoder.pooled(prompts))
    return img @ txt.T


def adherence(scorer: TextImageScorer, text_encoder, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Mean similarity of each image to its own prompt, and top-1 retrieval among the distinct prompts."""
    distinct = sorted(set(prompts))
    sims = similarities(scorer, text_encoder, images, distinct)
    own = torch.tensor([distinct.index(p) for p in prompts])
    own_sim = sims[torch.arange(len(prompts)), own]
    hits = sims.argmax(1) == own
    return {"tis": float(own_sim.mean()), "retrieval_top1": float(hits.float().mean()), "prompts": len(distinct),
            "images": len(prompts)}
