"""gmkit models -> diffusers-format pipeline folders (the inverse of ``interop.diffusers``).

    ddpm (pixel diffusion)        DDPMPipeline / DDIMPipeline: UNet2DModel + scheduler
    vqldm (VQ latent diffusion)   LDMPipeline: VQModel + UNet2DModel + DDIMScheduler
    ldm with a CLIP text encoder  StableDiffusionPipeline: AutoencoderKL + UNet2DConditionModel + CLIP

gmkit's modules carry diffusers' parameter names, so the weights are written as they are; the
configs are translated back, and every gmkit option diffusers' classes cannot express is refused by
name (class-conditional UNets, group counts that do not divide the channels, sizes the UNet2DModel
upsampler cannot reach, prompt encoders that are not CLIP). The VQ scaling factor is always written
out, so diffusers never falls back to its 0.18215 default (huggingface/diffusers#6725).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..checkpoint import atomic_write, save_tensors
from ..errors import GmkitError
from ..resolved import Resolved

FORMATS = ("diffusers",)
EXPORTABLE = {"ddpm": "DDPMPipeline / DDIMPipeline", "vqldm": "LDMPipeline", "ldm": "StableDiffusionPipeline (CLIP text encoder)"}
DIFFUSERS_VERSION = "0.30.0"  # the config format written (read by every diffusers since)
# gmkit sampler -> the diffusers scheduler that runs the same algorithm (tests/test_interop.py checks the pairs)
SCHEDULER_OF = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm++2m": "DPMSolverMultistepScheduler"}
BETA_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2",
                 "squaredcos_cap_v2": "squaredcos_cap_v2"}


def _refuse(what: str) -> GmkitError:
    return GmkitError(f"cannot export to diffusers: {what}")


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def _weights(folder: Path, module: torch.nn.Module, stem: str = "diffusion_pytorch_model", dtype=None) -> None:
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in module.state_dict().items()}
    save_tensors(folder / f"{stem}.safetensors", state, {"format": "pt"})


def _check_levels(u, what: str) -> None:
    bad = [ch for ch in u.block_out_channels if ch % u.norm_groups]
    if bad:
        raise _refuse(f"{what}: {bad[0]} channels do not split into {u.norm_groups} groups (gmkit used fewer)")
    factor = 2 ** (len(u.block_out_channels) - 1)
    if u.sample_size % factor:
        raise _refuse(f"{what}: sample size {u.sample_size} is not divisible by {factor}; diffusers' UNet2DModel "
                      "doubles sizes on the way up and would not meet its skip connections")


def unet2d_config(u) -> dict:
    """gmkit ``UNetConfig`` (pixel or VQ-latent diffusion) -> ``UNet2DModel`` config.json."""
    _check_levels(u, "unet")
    if u.num_classes > 0:
        raise _refuse("a class-conditional UNet (diffusers' DDPMPipeline cannot pass class labels)")
    n = len(u.block_out_channels)
    widths = [u.block_out_channels[i] for i in u.attention_blocks] + ([u.block_out_channels[-1]] if u.mid_attention else [])
    one_head = all(ch <= u.head_dim for ch in widths) and len(set(widths)) <= 1
    if not one_head and any(ch % u.head_dim or ch < u.head_dim for ch in widths):
        raise _refuse(f"unet: attention widths {widths} do not split into heads of {u.head_dim}")
    return {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION, "sample_size": u.sample_size,
            "in_channels": u.in_channels, "out_channels": u.out_channels, "center_input_sample": False,
            "time_embedding_type": "positional", "flip_sin_to_cos": u.flip_sin_to_cos, "freq_shift": u.freq_shift,
            "down_block_types": ["AttnDownBlock2D" if i in u.attention_blocks else "DownBlock2D" for i in range(n)],
            "mid_block_type": "UNetMidBlock2D",
            "up_block_types": ["AttnUpBlock2D" if n - 1 - j in u.attention_blocks else "UpBlock2D" for j in range(n)],
            "block_out_channels": list(u.block_out_channels), "layers_per_block": u.layers_per_block,
            "mid_block_scale_factor": 1, "downsample_padding": u.downsample_padding, "downsample_type": "conv",
            "upsample_type": "conv", "dropout": u.dropout, "act_fn": "silu",
            "attention_head_dim": None if one_head else u.head_dim, "norm_num_groups": u.norm_groups,
            "attn_norm_num_groups": None, "norm_eps": u.norm_eps, "resnet_time_scale_shift": "default",
            "add_attention": u.mid_attention, "class_embed_type": None, "num_class_embeds": None}


def unet2d_condition_config(u) -> dict:
    """gmkit ``UNetConfig`` with cross-attention -> ``UNet2DConditionModel`` config.json."""
    _check_levels(u, "unet")
    if not u.mid_attention:
        raise _refuse("a text-conditioned UNet without mid-block attention")
    n, chs = len(u.block_out_channels), list(u.block_out_channels)
    # diffusers reads attention_head_dim as the number of heads here (a historical naming)
    heads = u.num_heads if u.num_heads > 0 else [max(1, ch // u.head_dim) for ch in chs]
    return {"_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION, "sample_size": u.sample_size,
            "in_channels": u.in_channels, "out_channels": u.out_channels, "flip_sin_to_cos": u.flip_sin_to_cos,
            "freq_shift": u.freq_shift,
            "down_block_types": ["CrossAttnDownBlock2D" if i in u.attention_blocks else "DownBlock2D" for i in range(n)],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": ["CrossAttnUpBlock2D" if n - 1 - j in u.attention_blocks else "UpBlock2D" for j in range(n)],
            "block_out_channels": chs, "layers_per_block": u.layers_per_block, "downsample_padding": u.downsample_padding,
            "mid_block_scale_factor": 1, "dropout": u.dropout, "act_fn": "silu", "norm_num_groups": u.norm_groups,
            "norm_eps": u.norm_eps, "cross_attention_dim": u.cross_attention_dim,
            "transformer_layers_per_block": u.transformer_depth, "attention_head_dim": heads,
            "use_linear_projection": u.use_linear_projection}


def _autoencoder_blocks(c) -> dict:
    n = len(c.block_out_channels)
    bad = [ch for ch in c.block_out_channels if ch % c.norm_num_groups]
    if bad:
        raise _refuse(f"autoencoder: {bad[0]} channels do not split into {c.norm_num_groups} groups")
    return {"in_channels": c.in_channels, "out_channels": c.out_channels, "latent_channels": c.latent_channels,
            "block_out_channels": list(c.block_out_channels), "layers_per_block": c.layers_per_block,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "act_fn": "silu", "norm_num_groups": c.norm_num_groups, "mid_block_add_attention": c.mid_attention}


def scheduler_config(config, sampler: str) -> dict:
    """gmkit's diffusion settings -> the config of the diffusers scheduler running ``sampler``."""
    cls = SCHEDULER_OF.get(sampler, "DPMSolverMultistepScheduler")
    if config.beta_schedule not in BETA_SCHEDULE:
        raise _refuse(f"beta schedule {config.beta_schedule!r}")
    spacing = (config.solver_spacing or config.timestep_spacing) if cls.startswith("DPM") \
        else config.timestep_spacing
    out = {"_class_name": cls, "_diffusers_version": DIFFUSERS_VERSION, "num_train_timesteps": config.num_train_timesteps,
           "beta_schedule": BETA_SCHEDULE[config.beta_schedule], "beta_start": config.beta_start,
           "beta_end": config.beta_end, "trained_betas": None, "prediction_type": config.prediction_type,
           "timestep_spacing": spacing, "steps_offset": config.steps_offset}
    if cls in ("DDPMScheduler", "DDIMScheduler"):
        out.update(clip_sample=config.clip_sample, clip_sample_range=1.0, thresholding=False)
    if cls == "DDPMScheduler":
        out["variance_type"] = config.variance_type
    if cls == "DDIMScheduler":
        out["set_alpha_to_one"] = config.set_alpha_to_one
    return out


def export_diffusers(model: torch.nn.Module, resolved: Resolved, out: Path, sampler: str | None = None,
                     dtype: torch.dtype | None = None) -> list[str]:
    """Write ``model`` (built from ``resolved``) as a diffusers pipeline folder; returns the files written.

    ``sampler`` picks the scheduler written (default: what the model's name implies).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise GmkitError(f"{out}: already exists and is not empty; remove it or give another folder")
    name = model.name
    if name not in EXPORTABLE:
        raise _refuse(f"{name} models have no diffusers pipeline (exportable: "
                      f"{', '.join(f'{k} -> {v}' for k, v in EXPORTABLE.items())})")
    sampler = sampler or resolved.defaults.get("sampler") or ("ddim" if name != "ddpm" else "ddpm")
    c = model.config
    if name == "ddpm":
        if c.unet.cross_attention_dim:
            raise _refuse("a text-conditioned ddpm UNet")
        pipeline = "DDIMPipeline" if sampler == "ddim" else "DDPMPipeline"
        parts = {"unet": ("diffusers", "UNet2DModel")}
        _json(out / "unet" / "config.json", unet2d_config(c.unet))
        _weights(out / "unet", model.unet, dtype=dtype)
    elif name == "vqldm":
        pipeline = "LDMPipeline"
        parts = {"unet": ("diffusers", "UNet2DModel"), "vqvae": ("diffusers", "VQModel")}
        vq = c.vq
        _json(out / "unet" / "config.json", unet2d_config(c.unet))
        _json(out / "vqvae" / "config.json", {"_class_name": "VQModel", "_diffusers_version": DIFFUSERS_VERSION,
                                              **_autoencoder_blocks(vq), "sample_size": model.image_shape[-1],
                                              "num_vq_embeddings": vq.num_vq_embeddings, "vq_embed_dim": vq.vq_embed_dim,
                                              "scaling_factor": c.scaling_factor, "norm_type": "group",
                                              "lookup_from_codebook": False, "force_upcast": False})
        _weights(out / "unet", model.unet, dtype=dtype)
        _weights(out / "vqvae", model.vqvae, dtype=dtype)
    else:
        pipeline = "StableDiffusionPipeline"
        parts = _stable_diffusion(model, resolved, out, dtype)
    _json(out / "scheduler" / "scheduler_config.json", scheduler_config(c, sampler))
    scheduler = SCHEDULER_OF.get(sampler, "DPMSolverMultistepScheduler")
    index = {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION,
             **{k: list(v) for k, v in parts.items()}, "scheduler": ["diffusers", scheduler]}
    if pipeline == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    _json(out / "model_index.json", index)
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _stable_diffusion(model, resolved: Resolved, out: Path, dtype) -> dict:
    c = model.config
    if resolved.text_state is None or c.text_encoder != "clip":
        raise _refuse(f"its text encoder ({c.text_encoder}) is not CLIP, which diffusers' StableDiffusionPipeline "
                      "needs (export ldm models that came from a Stable Diffusion pipeline)")
    if c.unet.num_classes > 0:
        raise _refuse("a class-conditional UNet")
    _json(out / "unet" / "config.json", unet2d_condition_config(c.unet))
    _weights(out / "unet", model.unet, dtype=dtype)
    vae = c.autoencoder.vae
    _json(out / "vae" / "config.json", {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
                                        **_autoencoder_blocks(vae), "sample_size": c.image_size,
                                        "scaling_factor": c.latent_scale, "force_upcast": True})
    _weights(out / "vae", model.autoencoder.vae, dtype=dtype)
    text = {k: resolved.text_state[k] for k in resolved.text_state}  # LoRA deltas merged as they are read
    if dtype is not None:
        text = {k: v.to(dtype) if v.is_floating_point() else v for k, v in text.items()}
    _json(out / "text_encoder" / "config.json", resolved.files["text_encoder.config"])
    save_tensors(out / "text_encoder" / "model.safetensors", text, {"format": "pt"})
    shutil.copytree(resolved.files["tokenizer.path"], out / "tokenizer")
    return {"text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
            "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL")}
