"""Latent diffusion with text prompts (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"): the design behind Stable Diffusion, at laptop scale.

Three parts, one checkpoint (the text encoder is named, not stored):
  autoencoder   a KL autoencoder (``families/autoencoder.py``) compresses images 4x per side;
                its latents are scaled to unit variance by ``latent_scale`` (measured at training start)
  unet          the shared UNet with transformer blocks: self-attention, cross-attention to the
                prompt's token states, feed-forward; trained on latents with caption dropout so
                classifier-free guidance works (Ho & Salimans 2022)
  text encoder  frozen and pretrained (``nn/text.py``); every training caption is encoded once

The noise process is a ``DiffusionProcess`` (Stable Diffusion's schedule by default); sampling and
editing run any sampler of ``diffusion/samplers`` in latent space, then decode.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diffusion import sampling
from ..diffusion.sampling import SAMPLING_OPTIONS
from ..diffusion.process import DiffusionProcess, ProcessConfig
from ..errors import GmkitError, OptionError
from ..nn.text import draw_captions, encode_captions, per_image
from ..nn.unet import UNet, UNetConfig
from .autoencoder import Autoencoder, AutoencoderConfig
from .base import DECODE, ENCODE, SAMPLE, STEPS, DataInfo, Family, SamplingPlan, TrainSetup
from .first_stage import FirstStage, build_with_first_stage, first_stage_options
from .prompted import PromptConditioned

# What the training previews (and `gmkit sample ldm` with no prompt file) show.
PREVIEW_PROMPTS = ["a futuristic cityscape at sunset", "a red apple", "a smiling face", "a rocket",
                   "a green tree", "a blue car", "a cat", "a slice of pizza"]


def _ldm_unet() -> UNetConfig:
    return UNetConfig(in_channels=4, out_channels=4, sample_size=8, block_out_channels=[64, 128],
                      layers_per_block=1, attention_blocks=[0, 1], mid_attention=True, head_dim=32,
                      norm_groups=32, cross_attention_dim=384)


@dataclass
class LDMConfig(ProcessConfig):
    image_size: int = 32
    in_channels: int = 3
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    latent_scale: float = 0.0  # 1 / std of the training latents; 0 = measure when training starts
    unet: UNetConfig = field(default_factory=_ldm_unet)
    text_encoder: str = "minilm"
    text_max_length: int = 32
    caption_dropout: float = 0.1  # share of captions replaced by "" in training (enables guidance)
    # The process settings (ProcessConfig) with Stable Diffusion's schedule:
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    clip_sample: bool = False  # latents are not bounded to [-1, 1]
    class_dropout: float = 0.0  # unused (the prompt is the condition); older configs name it


class LDM(PromptConditioned, Family):
    name = "ldm"
    Config = LDMConfig
    capabilities = frozenset({SAMPLE, ENCODE, DECODE, STEPS})
    # Every option of pixel diffusion (samplers, editing), plus the prompts, guidance and the image size.
    sample_options = SAMPLING_OPTIONS | {"prompt", "negative_prompt", "guidance", "height", "width"}
    preview_options = {"sampler": "ddim", "steps": 30, "prompt": PREVIEW_PROMPTS, "guidance": 4.0}
    train_defaults = {"lr": 5e-4, "lr_schedule": "cosine", "batch_size": 64, "ema_decay": 0.999, "preview": 8,
                      "warmup": 500}
    default_guidance = 4.0
    default_sampler = "ddim"
    sweep_sampler = "ddim"
    latent_key = "latents"  # the tensor ``decode`` reads from an encoded file
    class_conditioning = "never"
    train_options = first_stage_options("autoencoder")
    first_stage = FirstStage("autoencoder", "autoencoder")

    @classmethod
    def fit_config(cls, config: LDMConfig, data: DataInfo, conditional: bool) -> LDMConfig:
        """Image channels and size from the data (the UNet follows the autoencoder in ``__init__``)."""
        cls.check_captioned(data, conditional)
        ae = dataclasses.replace(config.autoencoder, in_channels=data.channels, image_size=data.size)
        return dataclasses.replace(config, image_size=data.size, in_channels=data.channels, autoencoder=ae)

    @classmethod
    def build_for_training(cls, config: LDMConfig, data, setup: TrainSetup):
        """Train (into OUT/autoencoder) or load the first stage, then the LDM around it (``first_stage.py``)."""
        return build_with_first_stage(cls, config, data, setup, cls.first_stage)

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None) -> SamplingPlan:
        return SamplingPlan(*sampling.plan_summary(self.process, sampler or self.default_sampler, steps))

    def __init__(self, config: LDMConfig):
        ae_cfg = dataclasses.replace(config.autoencoder, in_channels=config.in_channels, image_size=config.image_size)
        first = Autoencoder(ae_cfg)
        lc, s, _ = first.latent_shape
        # The UNet works on the autoencoder's latents and reads the text encoder's states.
        unet = dataclasses.replace(config.unet, in_channels=lc, out_channels=lc, sample_size=s, num_classes=0,
                                   cross_attention_dim=config.unet.cross_attention_dim or 384)
        config = dataclasses.replace(config, autoencoder=ae_cfg, unet=unet)
        super().__init__(config)
        self.process = DiffusionProcess.discrete(config)
        self.unet = UNet(config.unet)
        self.autoencoder = first.requires_grad_(False)

    # -- shapes ------------------------------------------------------------------------------
    @property
    def sample_shape(self):
        """What the sampler denoises: the autoencoder's latent (``image_shape`` is Family's, from the config)."""
        return self.autoencoder.latent_shape

    def shape_for(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """The latent for an image of ``height`` x ``width`` pixels (default: the trained size); the UNet
        and autoencoder are convolutional, so any multiple of the autoencoder's factor works."""
        c, s, _ = self.sample_shape
        factor = self.autoencoder.vae.factor
        out = []
        for name, v in (("height", height), ("width", width)):
            if v is None:
                out.append(s)
            elif v < factor or v % 8 or v % factor:
                raise OptionError(name, f"must be a positive multiple of {max(8, factor)} pixels, got {v}")
            else:
                out.append(v // factor)
        return (c, *out)

    # -- first stage -------------------------------------------------------------------------
    def load_autoencoder(self, state: dict[str, torch.Tensor]) -> None:
        self.autoencoder.load_state_dict(state)
        self.autoencoder.requires_grad_(False)

    def to_latents(self, mean: torch.Tensor, logvar: torch.Tensor | None = None) -> torch.Tensor:
        z = mean if logvar is None else mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return z * self.config.latent_scale

    decode_slice = 8  # latents decoded at once: the decoder's activations, not the UNet's, peak at large sizes

    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents of any size (``--height/--width``: the decoder is convolutional)."""
        z = (z / self.config.latent_scale).to(self.device, next(self.autoencoder.parameters()).dtype)
        return torch.cat([self.autoencoder.vae.decode(z[i:i + self.decode_slice]).float().clamp(-1, 1)
                          for i in range(0, len(z), self.decode_slice)])

    # -- training ----------------------------------------------------------------------------
    def optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=weight_decay)}

    @torch.no_grad()
    def prepare_training(self, data, device, quiet: bool = False) -> None:
        """Encode every image (autoencoder posterior) and every caption (text encoder) once."""
        self.check_training_data(data)
        ae = self.autoencoder.eval()
        means, logvars = [], []
        for b in data.batches(256):  # in order: row i of the latents is example i (batch["index"])
            m, lv = ae.vae.encode(b["image"].to(device, torch.float32))
            means.append(m)
            logvars.append(lv)
        mean, logvar = torch.cat(means), torch.cat(logvars)
        if not self.config.latent_scale:
            g = torch.Generator(device="cpu").manual_seed(0)
            sample = mean + torch.randn(mean.shape, generator=g).to(device) * (0.5 * logvar).exp()
            self.config.latent_scale = float(1.0 / sample.std())
            if not quiet:
                print(f"gmkit: latent scale {self.config.latent_scale:.4f} (1 / std of the training latents)",
                      file=sys.stderr)
        self._train_cache = {"mean": mean, "logvar": logvar, **encode_captions(self.text, data.captions, device)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cache = self._train_cache
        if cache is None:
            raise GmkitError("ldm training needs prepare_training(data) first")
        idx = batch["index"].to(cache["mean"].device)
        z0 = self.to_latents(cache["mean"][idx], cache["logvar"][idx])
        context, mask = draw_captions(cache, idx, self.config.caption_dropout)
        return self.process.loss(lambda z, t: self.unet(z.contiguous(memory_format=torch.channels_last), t,
                                                       context=context, context_mask=mask), z0)

    # -- prompts -----------------------------------------------------------------------------
    def network(self, n: int, guidance: float | None = None, prompt=None, negative_prompt=None,
                class_label=None, **_: Any):
        """The UNet as ``net(z_t, c_noise)`` for a prompt (one, or one per image) with classifier-free
        guidance; the unconditional branch reads the negative prompt, or "" (what caption dropout trained)."""
        if class_label is not None:
            raise OptionError("class_label", "{class_label} is not taken by ldm models: they take {prompt}")
        prompts = per_image(prompt, n)
        negatives = per_image(negative_prompt, n)
        g = self.default_guidance if guidance is None else guidance
        states, mask = self.prompt_states(prompts + negatives)  # one call: both padded alike
        states = states.to(next(self.unet.parameters()).dtype)
        return sampling.unet_network(self.unet, {"context": states[:n], "context_mask": mask[:n]},
                                     {"context": states[n:], "context_mask": mask[n:]}, g)

    def denoiser(self, n: int = 1, **options: Any):
        """The UNet with its prompt conditioning as a denoiser D(z, sigma) on latents."""
        return self.process.denoiser(self.network(n, **options))

    # -- sampling ----------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], sampler: str | None = None, callback=None, **options: Any) -> torch.Tensor:
        """Images in [-1, 1] for ``prompt`` (a string, or one per image; None or "" = unconditional),
        ``height`` x ``width`` pixels (default: the trained size; ``shape_for``).

        With ``image``, img2img or inpainting runs on the image's latents; the known pixels of an
        inpainted image are the input's exactly, not their decoding."""
        image, mask = options.get("image"), options.get("mask")
        if image is not None:
            image = image.to(self.device, torch.float32)
            if options.get("strength") == 0 and mask is None:
                return image.expand(len(noise), -1, -1, -1).clone()  # strength 0: the input itself, not its decoding
            options["image"] = self.encode(image)["latents"]
        shape = self.shape_for(options.get("height"), options.get("width"))
        z = sampling.sample(self.process, self.denoiser(len(noise), **options), noise, shape, self.device,
                            sampler or self.default_sampler, callback=callback, **options)
        out = self.from_latents(z.to(next(self.autoencoder.parameters()).dtype)).float().clamp(-1, 1)
        if image is not None and mask is not None:
            m = mask.to(out.device, out.dtype)
            out = m * out + (1 - m) * image
        return out

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        """The autoencoder's (scaled) latents: what the UNet denoises."""
        mean, _ = self.autoencoder.vae.encode(x.to(self.device, next(self.autoencoder.parameters()).dtype))
        return {"latents": self.to_latents(mean.float())}

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, **_: Any) -> torch.Tensor:
        shape = self.sample_shape
        if z.ndim != 4 or tuple(z.shape[1:]) != tuple(shape):
            raise GmkitError(f"ldm decode: latents of shape {tuple(z.shape)}, this model needs (N, {', '.join(map(str, shape))})")
        if not bool(torch.isfinite(z).all()):
            raise GmkitError("ldm decode: the latents hold NaN or infinite values")
        return self.from_latents(z.to(self.device, next(self.autoencoder.parameters()).dtype)).float().clamp(-1, 1)

    def latent_description(self) -> dict[str, Any]:
        c, s, _ = self.sample_shape
        return {"kind": "continuous", "shape": [c, s, s], "text": f"autoencoder latent {c}x{s}x{s}"}

