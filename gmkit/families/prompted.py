"""What the text-to-image families (``ldm``, ``vqgpt``) share: a frozen text encoder.

The encoder is the config's built-in one (``nn/text.py``, named by ``text_encoder``, not stored in
the checkpoint) or the one a model came with (a Stable Diffusion pipeline's CLIP:
``attach_text_encoder``), built on first use. Training caches (encoded images and captions) stay
behind when a model is copied for the training previews.
"""

from __future__ import annotations

import torch

from ..errors import OptionError
from ..nn.text import TextEncoder, load_text_encoder, truncation_warnings


class PromptConditioned:
    """A mixin for Family subclasses whose config names ``text_encoder`` and ``text_max_length``."""

    _text: TextEncoder | None = None
    _text_factory = None  # set by attach_text_encoder: an encoder that came with the model
    _train_cache: dict[str, torch.Tensor] | None = None

    def __getstate__(self):
        # Copies (the training previews) share the text encoder and leave the training caches behind.
        state = self.__dict__.copy()
        state["_train_cache"] = None
        return state

    def attach_text_encoder(self, factory) -> None:
        """Use the prompt encoder the model came with (built on first use), not the config's built-in name."""
        self._text, self._text_factory = None, factory

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            self._text = (self._text_factory() if self._text_factory is not None
                          else load_text_encoder(self.config.text_encoder, self.config.text_max_length))
        return self._text

    def prompt_warnings(self, prompts: list[str]) -> list[str]:
        """What the user should know about these prompts (the text encoder reads a limited length)."""
        return truncation_warnings(self.text, prompts)

    @classmethod
    def check_captioned(cls, data, conditional: bool) -> None:
        """Fitting a config: the data must have captions; class labels are not what these families take."""
        if conditional:
            raise OptionError("conditional", f"does not apply: {cls.name} is conditioned on captions, not classes")
        if not data.captioned:
            raise OptionError("data", f"{data.name}: {cls.name} needs captioned data (openmoji, mnist-captions, or a "
                              "folder with metadata.jsonl)")

    def check_training_data(self, data) -> None:
        """Training encodes every image and caption once (``prepare_training``): a cached, captioned source."""
        if data.streamed:
            raise OptionError("data", f"{data.name}: {self.name} encodes every image once before training; give a "
                              "cached source (no stream)")
        if data.captions is None:
            raise OptionError("data", f"{data.name}: {self.name} needs captions")

    def prompt_states(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states (B, L, dim) and their mask (B, L) on the model's device, padded alike."""
        states, mask = self.text.encode(prompts)
        return states.to(self.device), mask.to(self.device)
