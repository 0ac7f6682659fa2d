"""Text-to-image the DALL-E way: a prompt-conditioned transformer over VQ-VAE code maps.

Two stages, as DALL-E (Ramesh et al. 2021) and Parti (Yu et al. 2022):
  first stage   a VQ-VAE (``families/vqvae.py`` with ``prior_layers=0``) turns a 32x32 image into an
                8x8 map of codebook indices and back; trained first, then frozen
  prior         a decoder-only transformer (``nn/gpt.py``) over the code map in raster order, reading
                the prompt's MiniLM token states (``nn/text.py``, the ``ldm``'s frozen encoder) by
                cross-attention in every layer:  p(k | c) = prod_i p(k_i | k_<i, c)
Training is next-token cross-entropy on the frozen codes, with 10% of captions replaced by ""
(caption dropout) so one network is both the conditional and the unconditional model, and
classifier-free guidance works for tokens (Gafni et al. 2022, Parti):
    logits = logits("") + g * (logits(prompt) - logits(""))
Sampling draws one token per step through a key/value cache, with temperature, top-k and top-p;
``image`` + ``mask`` regenerates the masked tokens of an image's code map and keeps the others.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import GmkitError, OptionError
from ..nn.gpt import GPT, sample_tokens
from ..nn.text import draw_captions, encode_captions, per_image
from .base import DECODE, ENCODE, SAMPLE, DataInfo, Family, TrainSetup
from .first_stage import FirstStage, build_with_first_stage, first_stage_options
from .ldm import PREVIEW_PROMPTS
from .prompted import PromptConditioned
from .vqvae import VQVAE, VQVAEConfig


def _first_stage_config() -> VQVAEConfig:
    return VQVAEConfig(in_channels=3, image_size=32, channels=[64, 128], res_blocks=2, num_codes=512, code_dim=32,
                       prior_layers=0)


@dataclass
class VQGPTConfig:
    image_size: int = 32
    in_channels: int = 3
    vq: VQVAEConfig = field(default_factory=_first_stage_config)
    dim: int = 128  # sized for training on one shared CPU thread
    layers: int = 4
    heads: int = 4
    dropout: float = 0.1
    text_encoder: str = "minilm"
    text_dim: int = 384  # width of the text encoder's token states
    text_max_length: int = 32
    caption_dropout: float = 0.1  # share of captions replaced by "" in training (enables guidance)



class VQGPT(PromptConditioned, Family):
    name = "vqgpt"
    Config = VQGPTConfig
    capabilities = frozenset({SAMPLE, ENCODE, DECODE})
    sample_options = frozenset({"prompt", "negative_prompt", "guidance", "temperature", "top_k", "top_p",
                                "image", "mask"})
    preview_options = {"prompt": PREVIEW_PROMPTS, "guidance": 3.0}
    train_defaults = {"lr": 5e-4, "lr_schedule": "cosine", "batch_size": 64, "warmup": 500, "weight_decay": 0.01,
                      "ema_decay": 0.999, "preview": 8}
    train_options = first_stage_options("vqvae")
    # Its VQ-VAE trains as the bundled one did: batch 32, cosine decay, weight EMA 0.99 (the codebook
    # is already an average); no preview (a VQ-VAE without a prior cannot sample).
    first_stage = FirstStage("vqvae", "vq", {"batch_size": 32, "lr_schedule": "cosine", "ema_decay": 0.99, "preview": 0})
    class_conditioning = "never"
    default_guidance = 3.0
    latent_key = "codes"
    no_likelihood = "no pixel likelihood: the transformer gives exact log-likelihoods of code maps, not of images"

    @classmethod
    def fit_config(cls, config: VQGPTConfig, data: DataInfo, conditional: bool) -> VQGPTConfig:
        """Image channels and size from the data (the first stage follows)."""
        cls.check_captioned(data, conditional)
        vq = dataclasses.replace(config.vq, in_channels=data.channels, image_size=data.size, prior_layers=0)
        return dataclasses.replace(config, image_size=data.size, in_channels=data.channels, vq=vq)

    @classmethod
    def build_for_training(cls, config: VQGPTConfig, data, setup: TrainSetup):
        """Train (into OUT/autoencoder) or load the VQ-VAE, then the transformer over its codes (``first_stage.py``)."""
        return build_with_first_stage(cls, config, data, setup, cls.first_stage)

    def __init__(self, config: VQGPTConfig):
        vq_cfg = dataclasses.replace(config.vq, in_channels=config.in_channels, image_size=config.image_size,
                                     prior_layers=0)
        config = dataclasses.replace(config, vq=vq_cfg)
        super().__init__(config)
        self.vq = VQVAE(vq_cfg).requires_grad_(False)
        h, w = self.vq.latent_shape
        self.gpt = GPT(vq_cfg.num_codes, h * w, config.dim, config.layers, config.heads, config.text_dim, config.dropout)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.vq.latent_shape

    def load_autoencoder(self, state: dict[str, torch.Tensor]) -> None:
        """The first stage's weights (a ``vqvae`` state; its own prior, if any, is left out)."""
        self.vq.load_state_dict({k: v for k, v in state.items() if not k.startswith("prior.")})
        self.vq.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vq.eval()  # frozen: its codebook must not move by EMA while the prior trains
        return self

    # -- training -----------------------------------------------------------------------------
    def optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.AdamW(self.gpt.parameters(), lr=lr, weight_decay=weight_decay)}

    @torch.no_grad()
    def prepare_training(self, data, device, quiet: bool = False) -> None:
        """The code map of every image and the states of every caption, computed once."""
        self.check_training_data(data)
        # In order: row i of the codes is example i (batch["index"]).
        codes = torch.cat([self.vq.encode(b["image"].to(device))["codes"].flatten(1) for b in data.batches(256)])
        if not quiet:
            used = int(codes.unique().numel())
            print(f"gmkit: {len(codes)} images -> {tuple(codes.shape[1:])} tokens each, {used} of "
                  f"{self.config.vq.num_codes} codes used", file=sys.stderr)
        self._train_cache = {"codes": codes, **encode_captions(self.text, data.captions, device)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cache = self._train_cache
        if cache is None:
            raise GmkitError("vqgpt training needs prepare_training(data) first")
        idx = batch["index"].to(cache["codes"].device)
        codes = cache["codes"][idx]
        context, mask = draw_captions(cache, idx, self.config.caption_dropout)
        logits = self.gpt(codes, context.to(self.gpt.pos.dtype), mask)
        loss = F.cross_entropy(logits.float().reshape(-1, self.gpt.vocab), codes.flatten())
        return {"loss": loss, "bits_per_token": loss.detach() / 0.6931471805599453}

    # -- sampling -----------------------------------------------------------------------------
    @torch.inference_mode()
    def sample_codes(self, noise: list[torch.Generator], prompt=None, negative_prompt=None, guidance: float | None = None,
                     temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                     image: torch.Tensor | None = None, mask: torch.Tensor | None = None, use_cache: bool = True,
                     callback=None) -> torch.Tensor:
        """Code maps (N, h, w) for ``prompt`` (one string, or one per image; None or "" = unconditional).

        Image i depends only on ``noise[i]``: it draws one uniform per token position. ``negative_prompt``
        replaces "" in the unconditional branch of guidance.
        """
        g = self.default_guidance if guidance is None else float(guidance)
        t = 1.0 if temperature is None else float(temperature)
        k = 0 if top_k is None else int(top_k)
        p = 1.0 if top_p is None else float(top_p)
        n, (h, w) = len(noise), self.latent_shape
        u = torch.stack([torch.rand(h * w, generator=gen) for gen in noise]).to(self.device)
        states, masks = self.prompt_states(per_image(prompt, n) + per_image(negative_prompt, n))  # padded alike
        states = states.to(self.gpt.pos.dtype)
        conds = [(states[:n], masks[:n]), (states[n:], masks[n:])]
        known = keep = None
        if image is not None:
            known, keep = self.completion_target(image, mask, n)
        return sample_tokens(self.gpt, u, conds, g, t, k, p, known, keep, use_cache, callback).view(n, h, w)

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], image: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               **options: Any) -> torch.Tensor:
        """Images in [-1, 1]: ``sample_codes``, decoded; with ``image`` + ``mask``, the kept pixels are the
        image's own (not their reconstruction), as in inpainting."""
        out = self.vq.decode(self.sample_codes(noise, image=image, mask=mask, **options))
        if image is not None:
            m = mask.to(out.device, out.dtype)
            out = m * out + (1 - m) * image.to(out.device, out.dtype)
        return out

    def completion_target(self, image: torch.Tensor, mask: torch.Tensor | None, n: int):
        """(known tokens, keep) (n, L): the image's code map, and which tokens to keep. A token is
        regenerated when any pixel it covers is white in ``mask`` (1 = generate)."""
        (h, w), size = self.latent_shape, self.config.image_size
        if mask is None:
            raise OptionError("mask", "{mask} is needed with {image}: vqgpt regenerates the masked tokens of the image's "
                                      "code map (white = regenerate, black = keep)")
        if image.ndim != 4 or tuple(image.shape[1:]) != (self.config.in_channels, size, size) or image.shape[0] != 1:
            raise OptionError("image", f"needs one image of shape (1, {self.config.in_channels}, {size}, {size}), "
                                       f"got {tuple(image.shape)}")
        if mask.ndim != 4 or tuple(mask.shape[-2:]) != (size, size) or mask.shape[:2] != (1, 1):
            raise OptionError("mask", f"needs shape (1, 1, {size}, {size}) like the image, got {tuple(mask.shape)}")
        codes = self.vq.encode(image.to(self.device, torch.float32))["codes"].flatten(1)
        regen = F.adaptive_max_pool2d(mask.float(), (h, w)).flatten(1) > 0
        return codes.expand(n, -1), (~regen).to(self.device).expand(n, -1)

    # -- encode / decode ----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        """Images -> the first stage's integer code maps (N, h, w): what the transformer models."""
        return self.vq.encode(x)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.vq.decode(z)

    def latent_metadata(self) -> dict[str, str]:
        return self.vq.latent_metadata()

    def latent_description(self) -> dict[str, Any]:
        h, w = self.latent_shape
        return {"kind": "discrete", "shape": [h, w], "text": f"{h}x{w} codes from {self.config.vq.num_codes}"}
