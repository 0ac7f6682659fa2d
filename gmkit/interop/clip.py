"""The CLIP text encoder of a Stable Diffusion pipeline folder, behind gmkit's ``TextEncoder`` interface.

The network is transformers' ``CLIPTextModel`` (the one piece gmkit borrows; install transformers
to run Stable Diffusion), built from ``text_encoder/config.json`` with weights read by gmkit (so
the fp16-variant and pickle rules hold); the tokenizer is the folder's own. Prompts are padded to
the tokenizer's 77 tokens and every token is attended to, as Stable Diffusion was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import GmkitError
from ..nn.text import TextEncoder


class CLIPText(TextEncoder):
    name = "clip"

    def __init__(self, root: Path, weights: str, pickled: bool, allow_pickle: bool, label: str, max_length: int = 77):
        try:
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise GmkitError("Stable Diffusion's text encoder needs transformers (pip install transformers)") from None
        from .diffusers import read_weights

        root = Path(root)
        try:
            config = CLIPTextConfig.from_pretrained(str(root / "text_encoder"))
            self.tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
        except (OSError, ValueError) as e:
            raise GmkitError(f"{label}: cannot read the text encoder or tokenizer ({str(e).splitlines()[0]})") from None
        model = CLIPTextModel(config)
        state = read_weights(root, weights, pickled, allow_pickle, label)
        try:
            missing, _ = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise GmkitError(f"{label}: text_encoder weights do not match its config.json "
                             f"({str(e).splitlines()[-1].strip()[:200]})") from None
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing:
            raise GmkitError(f"{label}: text_encoder weights lack {missing[:3]}")
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
