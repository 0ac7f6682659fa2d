"""The CLIP text encoder of a Stable Diffusion pipeline, behind gmkit's ``TextEncoder`` interface.

The network is transformers' ``CLIPTextModel`` (the one piece gmkit borrows; install transformers
to run Stable Diffusion), built from the pipeline's ``text_encoder/config.json`` (or one inferred from a single-file
checkpoint's tensors) with its
parameters on the meta device and then assigned from weights gmkit read itself (so the
fp16-variant, shard, pickle and LoRA rules hold); the tokenizer is the pipeline's own. Prompts are
padded to the tokenizer's 77 tokens and every token is attended to, as Stable Diffusion was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import LazyState, parameters_on_meta
from ..errors import GmkitError
from ..nn.text import TextEncoder


def clip_key(name: str) -> str:
    """A CLIP text-model parameter name in its classic form, ``text_model.*`` (what SD repos hold;
    transformers 5 names the same parameters without the prefix)."""
    return name if name.startswith("text_model.") else "text_model." + name


class CLIPText(TextEncoder):
    name = "clip"

    def __init__(self, config: dict, tokenizer_dir: Path, state: LazyState, label: str, max_length: int = 77):
        try:
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise GmkitError("Stable Diffusion's text encoder needs transformers (pip install transformers)") from None
        try:
            config = CLIPTextConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
            self.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
        except (OSError, ValueError, TypeError) as e:
            raise GmkitError(f"{label}: cannot read the text encoder or tokenizer ({str(e).splitlines()[0]})") from None
        with parameters_on_meta():
            model = CLIPTextModel(config)
        expected = {k: (clip_key(k), p) for k, p in model.named_parameters()}  # the model's name -> the state's
        missing = sorted(c for c, _ in expected.values() if c not in state)
        if missing:
            raise GmkitError(f"{label}: text_encoder weights lack {missing[:3]}")
        for k, (c, p) in expected.items():
            if tuple(p.shape) != state.shape(c):
                raise GmkitError(f"{label}: text_encoder tensor {c} has shape {state.shape(c)}, its config.json "
                                 f"needs {tuple(p.shape)}")
        model.load_state_dict({k: state.load(c, torch.float32) for k, (c, _) in expected.items()}, strict=False, assign=True)
        self.model = model.eval().requires_grad_(False)
        self.dim = config.hidden_size
        self.max_length = min(max_length, self.tokenizer.model_max_length)

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        states = self.model(ids)[0]
        return states.float(), torch.ones(ids.shape, dtype=torch.bool)
