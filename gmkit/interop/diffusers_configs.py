"""diffusers config.json files -> gmkit configs (and the defaults older files leave out).

Each translator checks every option gmkit's modules do not implement and refuses it by name.
Configs of 2022-era repos are read too: legacy keys (``timesteps`` for ``num_train_timesteps``)
and class or block names from before diffusers 0.3 are renamed first (``normalize``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import GmkitError
from ..nn.autoencoder_kl import AutoencoderKLConfig
from ..nn.autoencoder_vq import VQModelConfig
from ..nn.unet import UNetConfig

# -- defaults of the diffusers classes, for keys an older config.json leaves out ----------------
# (tests/test_interop.py checks these against the installed diffusers' signatures.)

UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}

VQMODEL_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256, "norm_num_groups": 32, "vq_embed_dim": None,
    "scaling_factor": 0.18215, "norm_type": "group", "mid_block_add_attention": True, "lookup_from_codebook": False,
    "force_upcast": False,
}

UNET2D_CONDITION_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu", "norm_num_groups": 32,
    "norm_eps": 1e-5, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False, "use_linear_projection": False,
    "class_embed_type": None, "addition_embed_type": None, "addition_time_embed_dim": None, "num_class_embeds": None,
    "upcast_attention": False, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional", "time_embedding_dim": None,
    "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "projection_class_embeddings_input_dim": None, "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None, "cross_attention_norm": None,
}

AUTOENCODER_KL_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64], "layers_per_block": 1, "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32,
    "sample_size": 32, "scaling_factor": 0.18215, "shift_factor": None, "latents_mean": None, "latents_std": None,
    "force_upcast": True, "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
}

_SCHEDULER_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                     "trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0}
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {**_SCHEDULER_COMMON, "clip_sample": True, "clip_sample_range": 1.0, "timestep_spacing": "leading",
                      "thresholding": False, "variance_type": "fixed_small", "rescale_betas_zero_snr": False},
    "DDIMScheduler": {**_SCHEDULER_COMMON, "clip_sample": True, "clip_sample_range": 1.0, "timestep_spacing": "leading",
                      "thresholding": False, "rescale_betas_zero_snr": False, "set_alpha_to_one": True},
    "PNDMScheduler": {**_SCHEDULER_COMMON, "timestep_spacing": "leading", "set_alpha_to_one": False},
    "DPMSolverMultistepScheduler": {**_SCHEDULER_COMMON, "timestep_spacing": "linspace", "thresholding": False,
                                    "rescale_betas_zero_snr": False},
    "LMSDiscreteScheduler": {**_SCHEDULER_COMMON, "timestep_spacing": "linspace"},
    "EulerDiscreteScheduler": {**_SCHEDULER_COMMON, "timestep_spacing": "linspace", "rescale_betas_zero_snr": False},
    "EulerAncestralDiscreteScheduler": {**_SCHEDULER_COMMON, "timestep_spacing": "linspace",
                                        "rescale_betas_zero_snr": False},
}
# The gmkit sampler (and step count) each scheduler class implies; others run DPM-Solver++(2M).
SCHEDULER_SAMPLER = {"DDPMScheduler": {"sampler": "ddpm"}, "DDIMScheduler": {"sampler": "ddim", "steps": 50},
                     "DPMSolverMultistepScheduler": {"sampler": "dpm++2m", "steps": 25}}
FALLBACK_SAMPLER = {"sampler": "dpm++2m", "steps": 25}
# DDPM's step variance (Ho et al. 2020 sec. 3.2; Nichol & Dhariwal 2021 eq. 15): diffusers' name -> gmkit's.
# fixed_small_log is fixed_small computed in log space; "learned" and "fixed_large_log" are refused.
VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
                  "learned_range": "learned_range"}

# pipeline class -> {component: accepted classes}
PIPELINES: dict[str, dict[str, tuple[str, ...]]] = {
    "DDPMPipeline": {"unet": ("UNet2DModel",), "scheduler": tuple(SCHEDULER_DEFAULTS)},
    "DDIMPipeline": {"unet": ("UNet2DModel",), "scheduler": tuple(SCHEDULER_DEFAULTS)},
    "LDMPipeline": {"vqvae": ("VQModel",), "unet": ("UNet2DModel",), "scheduler": tuple(SCHEDULER_DEFAULTS)},
    "StableDiffusionPipeline": {"vae": ("AutoencoderKL",), "text_encoder": ("CLIPTextModel",),
                                "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "unet": ("UNet2DConditionModel",),
                                "scheduler": tuple(SCHEDULER_DEFAULTS)},
}


# -- small readers --------------------------------------------------------------------------------

def read_json(path: Path, label: str, what: str) -> dict:
    if not path.is_file():
        raise GmkitError(f"{label}: missing file {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GmkitError(f"{label}: {what} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise GmkitError(f"{label}: {what} does not hold a JSON object")
    return data

def _check(cond: bool, label: str, what: str) -> None:
    if not cond:
        raise GmkitError(f"{label}: {what} is not supported by gmkit's engine")



# -- names and keys of 2022-era repos ------------------------------------------------------------

CLASS_ALIASES = {
    # pipelines and models renamed in diffusers 0.3
    "LatentDiffusionUncondPipeline": "LDMPipeline", "DDPM": "DDPMPipeline", "DDIM": "DDIMPipeline",
    "UNetUnconditionalModel": "UNet2DModel", "UNetConditionalModel": "UNet2DConditionModel",
    # blocks
    "UNetResDownBlock2D": "DownBlock2D", "UNetResAttnDownBlock2D": "AttnDownBlock2D",
    "UNetResUpBlock2D": "UpBlock2D", "UNetResAttnUpBlock2D": "AttnUpBlock2D",
}
KEY_ALIASES = {"timesteps": "num_train_timesteps", "image_size": "sample_size", "resnet_num_groups": "norm_num_groups",
               "resnet_eps": "norm_eps"}
IGNORED_KEYS = ("tensor_format",)  # torch vs numpy output: meaningless here


def class_name(name: str) -> str:
    return CLASS_ALIASES.get(name, name)


def normalize(cfg: dict) -> dict:
    """A config with private keys dropped and legacy keys and block names renamed (a current key wins)."""
    out = {}
    for k, v in cfg.items():
        if k.startswith("_") or k in IGNORED_KEYS:
            continue
        key = KEY_ALIASES.get(k, k)
        if key != k and key in cfg:
            continue
        if isinstance(v, list) and k.endswith("_block_types"):
            v = [class_name(t) if isinstance(t, str) else t for t in v]
        out[key] = v
    return out


# -- config translation ---------------------------------------------------------------------------


def _attention_levels(c: dict, n: int, where: str, kind: str) -> list[int]:
    """The levels whose blocks attend (``{kind}DownBlock2D`` / ``{kind}UpBlock2D``), checked to mirror."""
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if len(down) != n or len(up) != n:
        raise GmkitError(f"{where}: {len(down)} down and {len(up)} up block types for {n} block_out_channels")
    for t in down:
        _check(t in ("DownBlock2D", f"{kind}DownBlock2D"), where, f"down block {t!r}")
    for t in up:
        _check(t in ("UpBlock2D", f"{kind}UpBlock2D"), where, f"up block {t!r}")
    attn = [i for i, t in enumerate(down) if t == f"{kind}DownBlock2D"]
    attn_up = sorted(n - 1 - j for j, t in enumerate(up) if t == f"{kind}UpBlock2D")
    _check(attn == attn_up, where, f"attention at down levels {attn} but up levels {attn_up}")
    return attn


def _square(size, label: str, what: str) -> int:
    if isinstance(size, (list, tuple)):
        _check(len(size) == 2 and size[0] == size[1], label, f"{what} {size} (non-square)")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise GmkitError(f"{label}: {what} is missing from its config.json (got {size!r})")
    return size


def unet2d_config(cfg: dict, label: str):
    """A ``UNet2DModel`` config.json -> gmkit ``UNetConfig``."""
    c = {**UNET2D_DEFAULTS, **normalize(cfg)}
    where = f"{label} unet"
    _check(c["time_embedding_type"] == "positional", where, f"time_embedding_type={c['time_embedding_type']!r}")
    _check(not c["center_input_sample"], where, "center_input_sample=true")
    _check(c["act_fn"] in ("silu", "swish"), where, f"act_fn={c['act_fn']!r}")
    _check(c["resnet_time_scale_shift"] == "default", where, f"resnet_time_scale_shift={c['resnet_time_scale_shift']!r}")
    _check(c["class_embed_type"] is None and c["num_class_embeds"] is None, where, "a class-conditional UNet2DModel")
    _check(c["mid_block_type"] == "UNetMidBlock2D", where, f"mid_block_type={c['mid_block_type']!r}")
    _check(c["mid_block_scale_factor"] == 1, where, f"mid_block_scale_factor={c['mid_block_scale_factor']}")
    _check(c["downsample_type"] == "conv" and c["upsample_type"] == "conv", where,
           f"downsample_type={c['downsample_type']!r}/upsample_type={c['upsample_type']!r}")
    chs = [int(x) for x in c["block_out_channels"]]
    _check(c["time_embedding_dim"] in (None, chs[0] * 4), where, f"time_embedding_dim={c['time_embedding_dim']}")
    n = len(chs)
    attn = _attention_levels(c, n, where, "Attn")
    groups = int(c["norm_num_groups"])
    _check(c["attn_norm_num_groups"] in (None, groups), where, f"attn_norm_num_groups={c['attn_norm_num_groups']}")
    bad = [ch for ch in chs if ch % groups]
    if bad:
        raise GmkitError(f"{where}: {bad[0]} channels do not split into norm_num_groups={groups}")
    head = c["attention_head_dim"]
    if head is None:
        head_dim = max(chs)  # the reference's default: one head as wide as the block
    else:
        head_dim = int(head)
        levels = [chs[i] for i in attn] + ([chs[-1]] if c["add_attention"] else [])
        bad = [ch for ch in levels if ch % head_dim or ch < head_dim]
        if bad:
            raise GmkitError(f"{where}: {bad[0]} channels do not split into heads of attention_head_dim={head_dim}")
    return UNetConfig(in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]),
                      sample_size=_square(c["sample_size"], where, "sample_size"), block_out_channels=chs,
                      layers_per_block=int(c["layers_per_block"]), attention_blocks=attn,
                      mid_attention=bool(c["add_attention"]), head_dim=head_dim, norm_groups=groups,
                      dropout=float(c["dropout"] or 0.0), norm_eps=float(c["norm_eps"]),
                      flip_sin_to_cos=bool(c["flip_sin_to_cos"]), freq_shift=float(c["freq_shift"]),
                      downsample_padding=int(c["downsample_padding"]))


def scheduler_settings(cls: str, cfg: dict, label: str) -> tuple[dict, dict]:
    """A scheduler config -> (ProcessConfig fields, sample defaults: which gmkit sampler and steps)."""
    where = f"{label} scheduler ({cls})"
    if cls not in SCHEDULER_DEFAULTS:
        raise GmkitError(f"{where}: unknown scheduler class (known: {', '.join(SCHEDULER_DEFAULTS)})")
    given = normalize(cfg)
    c = {**SCHEDULER_DEFAULTS[cls], **given}
    _check(c.get("trained_betas") is None, where, "trained_betas")
    _check(c["beta_schedule"] in ("linear", "scaled_linear", "squaredcos_cap_v2"), where, f"beta_schedule={c['beta_schedule']!r}")
    _check(c["prediction_type"] in ("epsilon", "v_prediction"), where, f"prediction_type={c['prediction_type']!r}")
    _check(c["timestep_spacing"] in ("leading", "trailing", "linspace"), where, f"timestep_spacing={c['timestep_spacing']!r}")
    _check(not c.get("thresholding"), where, "thresholding=true")
    _check(not c.get("rescale_betas_zero_snr"), where, "rescale_betas_zero_snr=true")
    _check(c.get("clip_sample_range", 1.0) == 1.0, where, f"clip_sample_range={c.get('clip_sample_range')}")
    variance = c.get("variance_type") or "fixed_small"
    _check(variance in VARIANCE_TYPES, where, f"variance_type={variance!r}")
    # A spacing the config leaves out is each scheduler class's default, as when diffusers users
    # swap schedulers with from_config: leading for DDPM/DDIM, linspace for DPM-Solver++.
    spacing = given.get("timestep_spacing")
    settings = {"num_train_timesteps": int(c["num_train_timesteps"]), "beta_schedule": c["beta_schedule"],
                "beta_start": float(c["beta_start"]), "beta_end": float(c["beta_end"]),
                "prediction_type": c["prediction_type"], "clip_sample": bool(c.get("clip_sample", False)),
                "timestep_spacing": spacing or "leading", "steps_offset": int(c["steps_offset"]),
                "solver_spacing": spacing or "linspace",
                # DDIM's final alpha: as written, else DDIM's default (what DDIMScheduler.from_config gives)
                "set_alpha_to_one": bool(given.get("set_alpha_to_one", True)),
                "variance_type": VARIANCE_TYPES[variance]}
    return settings, dict(SCHEDULER_SAMPLER.get(cls, FALLBACK_SAMPLER))


def _autoencoder_channels(c: dict, where: str) -> list[int]:
    """The block widths of a VQModel/AutoencoderKL config, after checking its blocks are the plain
    encoder/decoder ones gmkit implements."""
    _check(all(t == "DownEncoderBlock2D" for t in c["down_block_types"]), where, f"down blocks {c['down_block_types']}")
    _check(all(t == "UpDecoderBlock2D" for t in c["up_block_types"]), where, f"up blocks {c['up_block_types']}")
    _check(c["act_fn"] in ("silu", "swish"), where, f"act_fn={c['act_fn']!r}")
    chs = [int(x) for x in c["block_out_channels"]]
    if len(c["down_block_types"]) != len(chs) or len(c["up_block_types"]) != len(chs):
        raise GmkitError(f"{where}: block types and block_out_channels differ in length")
    return chs


def vqmodel_config(cfg: dict, label: str):
    given = normalize(cfg)
    c = {**VQMODEL_DEFAULTS, **given}
    where = f"{label} vqvae"
    chs = _autoencoder_channels(c, where)
    _check(c["norm_type"] == "group", where, f"norm_type={c['norm_type']!r}")
    config = VQModelConfig(in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]),
                           latent_channels=int(c["latent_channels"]), block_out_channels=chs,
                           layers_per_block=int(c["layers_per_block"]), norm_num_groups=int(c["norm_num_groups"]),
                           mid_attention=bool(c["mid_block_add_attention"]),
                           num_vq_embeddings=int(c["num_vq_embeddings"]),
                           vq_embed_dim=int(c["vq_embed_dim"] if c["vq_embed_dim"] is not None else c["latent_channels"]))
    # A VQ config without scaling_factor means latents are not scaled (1.0, as CompVis trained
    # ldm-celebahq-256), not diffusers' class default 0.18215 (huggingface/diffusers#6725).
    return config, float(given["scaling_factor"]) if given.get("scaling_factor") is not None else 1.0


def unet2d_condition_config(cfg: dict, label: str):
    """A ``UNet2DConditionModel`` config.json (Stable Diffusion 1.x/2.x) -> gmkit ``UNetConfig``."""
    c = {**UNET2D_CONDITION_DEFAULTS, **normalize(cfg)}
    where = f"{label} unet"
    for key in ("encoder_hid_dim", "encoder_hid_dim_type", "class_embed_type", "addition_embed_type", "num_class_embeds",
                "time_embedding_dim", "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim",
                "reverse_transformer_layers_per_block", "cross_attention_norm", "projection_class_embeddings_input_dim"):
        _check(c[key] is None, where, f"{key}={c[key]!r}")
    for key in ("center_input_sample", "dual_cross_attention", "only_cross_attention", "resnet_skip_time_act",
                "class_embeddings_concat", "mid_block_only_cross_attention"):
        _check(not c[key], where, f"{key}={c[key]!r}")
    _check(c["time_embedding_type"] == "positional", where, f"time_embedding_type={c['time_embedding_type']!r}")
    _check(c["act_fn"] in ("silu", "swish"), where, f"act_fn={c['act_fn']!r}")
    _check(c["resnet_time_scale_shift"] == "default", where, f"resnet_time_scale_shift={c['resnet_time_scale_shift']!r}")
    _check(c["resnet_out_scale_factor"] == 1 and c["mid_block_scale_factor"] == 1, where, "output scale factors other than 1")
    _check(c["conv_in_kernel"] == 3 and c["conv_out_kernel"] == 3, where, "conv kernels other than 3")
    _check(c["attention_type"] == "default", where, f"attention_type={c['attention_type']!r}")
    _check(c["mid_block_type"] == "UNetMidBlock2DCrossAttn", where, f"mid_block_type={c['mid_block_type']!r}")
    chs = [int(x) for x in c["block_out_channels"]]
    n = len(chs)

    def per_level(value, what):
        values = list(value) if isinstance(value, (list, tuple)) else [value] * n
        if len(values) != n:
            raise GmkitError(f"{where}: {what} lists {len(values)} values for {n} blocks")
        return values

    layers = per_level(c["layers_per_block"], "layers_per_block")
    depth = per_level(c["transformer_layers_per_block"], "transformer_layers_per_block")
    _check(len(set(layers)) == 1, where, f"layers_per_block varying by block {layers}")
    _check(len(set(depth)) == 1 and isinstance(depth[0], int), where, f"transformer_layers_per_block={depth}")
    _check(isinstance(c["cross_attention_dim"], int), where, f"cross_attention_dim={c['cross_attention_dim']}")
    attn = _attention_levels(c, n, where, "CrossAttn")
    # diffusers reads attention_head_dim as the number of heads here (a historical naming).
    heads = per_level(c["num_attention_heads"] or c["attention_head_dim"], "attention heads")
    used = [(chs[i], int(heads[i])) for i in attn] + [(chs[-1], int(heads[-1]))]
    for ch, h in used:
        if ch % h:
            raise GmkitError(f"{where}: {ch} channels do not split into {h} attention heads")
    if len({h for _, h in used}) == 1:
        num_heads, head_dim = used[0][1], 0
    elif len({ch // h for ch, h in used}) == 1:
        num_heads, head_dim = 0, used[0][0] // used[0][1]
    else:
        raise GmkitError(f"{where}: attention heads {heads} are not supported (neither their count nor width is constant)")
    groups = int(c["norm_num_groups"])
    bad = [ch for ch in chs if ch % groups]
    if bad:
        raise GmkitError(f"{where}: {bad[0]} channels do not split into norm_num_groups={groups}")
    return UNetConfig(in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]),
                      sample_size=_square(c["sample_size"], where, "sample_size"), block_out_channels=chs,
                      layers_per_block=int(layers[0]), attention_blocks=attn, mid_attention=True,
                      head_dim=head_dim or 32, num_heads=num_heads, norm_groups=groups, dropout=float(c["dropout"] or 0.0),
                      cross_attention_dim=int(c["cross_attention_dim"]), transformer_depth=int(depth[0]),
                      use_linear_projection=bool(c["use_linear_projection"]), norm_eps=float(c["norm_eps"]),
                      flip_sin_to_cos=bool(c["flip_sin_to_cos"]), freq_shift=float(c["freq_shift"]),
                      downsample_padding=int(c["downsample_padding"]))


def autoencoder_kl_config(cfg: dict, label: str):
    """An ``AutoencoderKL`` config.json -> (gmkit ``AutoencoderKLConfig``, sample size, scaling factor)."""
    c = {**AUTOENCODER_KL_DEFAULTS, **normalize(cfg)}
    where = f"{label} vae"
    chs = _autoencoder_channels(c, where)
    for key in ("shift_factor", "latents_mean", "latents_std"):
        _check(c[key] is None, where, f"{key}={c[key]!r}")
    _check(c["use_quant_conv"] and c["use_post_quant_conv"], where, "an autoencoder without quant convolutions")
    _check(c["in_channels"] == c["out_channels"], where, f"in_channels={c['in_channels']} != out_channels={c['out_channels']}")
    config = AutoencoderKLConfig(in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]),
                                 latent_channels=int(c["latent_channels"]), block_out_channels=chs,
                                 layers_per_block=int(c["layers_per_block"]), norm_num_groups=int(c["norm_num_groups"]),
                                 norm_eps=1e-6, mid_attention=bool(c["mid_block_add_attention"]))
    return config, float(c["scaling_factor"])

