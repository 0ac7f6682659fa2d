"""VQ-VAE (van den Oord et al. 2017) with an EMA codebook and a learned autoregressive prior.

    z_e = E(x)                      encoder: a (D, h, w) map of continuous vectors
    k   = argmin_j ||z_e - e_j||    vector quantization (gmkit.nn.quantizer), codebook by EMA
    x^  = G(e_k)                    decoder; gradients reach E straight through the quantizer
    loss = ||x - x^||^2 + beta ||z_e - sg(e_k)||^2                     (eq. 3, codebook term by EMA)
         + prior_weight * CE(prior(sg(k)), k)                          (the prior, on detached codes)

The prior is a small causal transformer over the code map in raster order (``nn/gpt.py``; it
samples through a key/value cache). ``prior_layers=0`` leaves it out: a VQ autoencoder alone, the
first stage of ``vqgpt``. It trains in the
same loop and the same checkpoint as the autoencoder: its input is the detached code map, so its
loss never reaches the autoencoder, and it has its own optimizer and gradient clipping
(``optimizers`` / ``train_step``). ``sample`` draws a code map from the prior, position by
position, and decodes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import GmkitError
from ..nn.encoder_decoder import ConvDecoder, ConvEncoder
from ..nn.gpt import GPT, sample_tokens
from ..nn.quantizer import VectorQuantizer
from .base import DECODE, ENCODE, SAMPLE, Family


@dataclass
class VQVAEConfig:
    in_channels: int = 1
    image_size: int = 28
    channels: list[int] = field(default_factory=lambda: [32, 64])  # one stride-2 stage each: 28 -> 7
    res_blocks: int = 1
    num_codes: int = 128
    code_dim: int = 16
    commitment: float = 0.25  # beta in eq. 3
    ema_decay: float = 0.99
    dead_threshold: float = 1.0  # codes whose EMA usage falls below this are restarted
    prior_dim: int = 96
    prior_layers: int = 2  # 0: no prior, a VQ autoencoder only (the first stage of vqgpt)
    prior_heads: int = 4
    prior_weight: float = 1.0
    temperature: float = 1.0  # softmax temperature when sampling the prior


class VQVAE(Family):
    name = "vqvae"
    Config = VQVAEConfig
    capabilities = frozenset({SAMPLE, ENCODE, DECODE})
    sample_options = frozenset()
    latent_key = "codes"
    no_likelihood = "no likelihood capability: deterministic codes; the prior models codes, not pixels"

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        c = config
        if not c.channels or c.image_size % (2 ** len(c.channels)):
            raise GmkitError(f"image_size {c.image_size} must be divisible by 2^{len(c.channels)}")
        self.s = c.image_size // 2 ** len(c.channels)
        self.encoder = ConvEncoder(c.in_channels, c.channels, c.code_dim, c.res_blocks)
        self.quantizer = VectorQuantizer(c.num_codes, c.code_dim, c.ema_decay, dead_threshold=c.dead_threshold)
        self.decoder = ConvDecoder(c.code_dim, c.channels, c.in_channels, c.res_blocks)
        self.prior = (GPT(c.num_codes, self.s * self.s, c.prior_dim, c.prior_layers, c.prior_heads)
                      if c.prior_layers > 0 else None)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.s, self.s)

    def codebook_id(self) -> str:
        """A short fingerprint of the codebook: code maps are only meaningful with it."""
        data = self.quantizer.embed.detach().float().cpu().contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    def latent_description(self) -> dict:
        h, w = self.latent_shape
        k = self.config.num_codes
        return {"kind": "discrete", "shape": [h, w], "codebook": k, "text": f"discrete: {h}x{w} codes from a {k}-entry codebook"}

    def latent_metadata(self) -> dict[str, str]:
        return {"gmkit.codebook_id": self.codebook_id(), "gmkit.num_codes": str(self.config.num_codes)}

    # -- training -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        z = self.encoder(x)
        z_q, codes, commit, stats = self.quantizer(z)
        recon = self.decoder(z_q).float()
        mse = F.mse_loss(recon, x.float())
        loss = mse + self.config.commitment * commit
        # Components keep their graphs (tests backpropagate them alone); train_step logs floats.
        out = {"mse": mse, "commit": commit, "perplexity": stats["perplexity"], "usage": stats["usage"]}
        if self.prior is not None:
            logits = self.prior(codes.detach().flatten(1))
            out["prior_nll"] = F.cross_entropy(logits.float().reshape(-1, self.config.num_codes), codes.flatten())
            loss = loss + self.config.prior_weight * out["prior_nll"]
        return {"loss": loss, **out}

    def _groups(self) -> tuple[list, list]:
        prior = list(self.prior.parameters()) if self.prior is not None else []
        ids = {id(p) for p in prior}
        return [p for p in self.parameters() if id(p) not in ids], prior

    def optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        ae, prior = self._groups()
        opts = {"model": torch.optim.AdamW(ae, lr=lr, weight_decay=weight_decay)}
        if prior:
            opts["prior"] = torch.optim.AdamW(prior, lr=lr, weight_decay=weight_decay)
        return opts

    def train_step(self, wrapped, batch, opts, step, grad_clip, accum=1):
        """One step of both optimizers; the two losses touch disjoint parameters, so one backward serves."""
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        losses = self.backward(wrapped, batch, accum)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            return {"loss": float(loss)}
        clip = grad_clip if grad_clip > 0 else float("inf")
        ae, prior = self._groups()
        norm = torch.nn.utils.clip_grad_norm_(ae, clip)
        prior_norm = torch.nn.utils.clip_grad_norm_(prior, clip)
        for opt in opts.values():
            opt.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": float(norm),
                "prior_grad_norm": float(prior_norm)}

    # -- encode / decode / sample -------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        """Images -> integer code maps (N, h, w)."""
        z = self.encoder(x.to(self.device, next(self.parameters()).dtype))
        _, codes, _, _ = self.quantizer(z)
        return {"codes": codes}

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstructions in [-1, 1], code maps)."""
        codes = self.encode(x)["codes"]
        return self.decode(codes), codes

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, **_: Any) -> torch.Tensor:
        """Integer code maps (N, h, w), or quantized vectors (N, code_dim, h, w), -> images in [-1, 1]."""
        h, w = self.latent_shape
        k, d = self.config.num_codes, self.config.code_dim
        if z.numel() == 0:
            raise GmkitError(f"{self.name} decode: the code tensor is empty")
        if not z.is_floating_point():
            if z.ndim != 3 or tuple(z.shape[1:]) != (h, w):
                raise GmkitError(f"{self.name} decode: code maps of shape {tuple(z.shape)}, this model needs (N, {h}, {w})")
            if bool(((z < 0) | (z >= k)).any()):
                raise GmkitError(f"{self.name} decode: codes must lie in 0..{k - 1}, found {int(z.min())}..{int(z.max())}")
            q = self.quantizer.lookup(z.to(self.device).long()).permute(0, 3, 1, 2)
        else:
            if z.ndim != 4 or tuple(z.shape[1:]) != (d, h, w):
                raise GmkitError(f"{self.name} decode: latents of shape {tuple(z.shape)}, this model needs (N, {d}, {h}, {w})")
            if not bool(torch.isfinite(z).all()):
                raise GmkitError(f"{self.name} decode: the latents hold NaN or infinite values")
            q = z.to(self.device)
        dtype = next(self.decoder.parameters()).dtype
        return self.decoder(q.to(dtype)).float().clamp(-1, 1)

    @torch.inference_mode()
    def sample_codes(self, noise: list[torch.Generator], temperature: float | None = None,
                     use_cache: bool = True) -> torch.Tensor:
        """Code maps (N, h, w) drawn from the prior; position i of image j uses generator j alone."""
        if self.prior is None:
            raise GmkitError(f"this {self.name} model has no prior (prior_layers=0): it is a first stage that encodes "
                             "and decodes code maps; sample from a vqgpt model built on it")
        n, (h, w) = len(noise), self.latent_shape
        t = temperature or self.config.temperature
        # One uniform per image and position, from the image's own generator: an image depends
        # only on its seed, whatever the batch.
        u = torch.stack([torch.rand(h * w, generator=g) for g in noise]).to(self.device)
        codes = sample_tokens(self.prior, u, [(None, None)], temperature=t, use_cache=use_cache)
        return codes.view(n, h, w)

    @torch.inference_mode()
    def sample(self, noise: list[torch.Generator], callback=None, **_: Any) -> torch.Tensor:
        return self.decode(self.sample_codes(noise))
