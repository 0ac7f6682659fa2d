"""diffusers-format pipelines (``model_index.json`` + one subfolder per component) as gmkit models.

A pipeline folder or Hub repo is read without diffusers: each component's ``config.json`` is
translated into a gmkit config, its weights (``*.safetensors``; the ``fp16`` variant when a half
dtype is asked for) are renamed onto gmkit's own modules, and the scheduler config becomes the
diffusion settings (beta schedule, prediction type, timestep spacing, steps offset, clipping).

    DDPMPipeline, DDIMPipeline    UNet2DModel                    -> family ddpm
    LDMPipeline                   VQModel + UNet2DModel          -> family vqldm
    StableDiffusionPipeline       AutoencoderKL + UNet2DConditionModel + CLIP text encoder
                                                                 -> family ldm

Every unsupported option is refused by name rather than silently approximated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import load_tensors
from ..errors import GmkitError
from .hub import RepoFiles
from .pickles import load_pickled

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

# pipeline class -> {component: accepted classes}
PIPELINES: dict[str, dict[str, tuple[str, ...]]] = {
    "DDPMPipeline": {"unet": ("UNet2DModel",), "scheduler": tuple(SCHEDULER_DEFAULTS)},
    "DDIMPipeline": {"unet": ("UNet2DModel",), "scheduler": tuple(SCHEDULER_DEFAULTS)},
    "LDMPipeline": {"vqvae": ("VQModel",), "unet": ("UNet2DModel",), "scheduler": tuple(SCHEDULER_DEFAULTS)},
    "StableDiffusionPipeline": {"vae": ("AutoencoderKL",), "text_encoder": ("CLIPTextModel",),
                                "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "unet": ("UNet2DConditionModel",),
                                "scheduler": tuple(SCHEDULER_DEFAULTS)},
}

WEIGHT_STEMS = {"safetensors": ("diffusion_pytorch_model", "model"), "bin": ("diffusion_pytorch_model", "pytorch_model")}


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


def components(index: dict) -> dict[str, str]:
    """{component: class name} of a model_index.json (components set to null are left out)."""
    out = {}
    for k, v in index.items():
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1] is not None:
            out[k] = str(v[1])
    return out


def choose_weights(names: set[str], comp: str, prefer_half: bool, label: str) -> tuple[str, bool]:
    """Which weights file of a component to read: (relative path, is_pickle).

    safetensors before pickles; within each, the ``fp16`` variant first when a half dtype is wanted,
    the full-precision file first otherwise (either one serves: weights are cast on load).
    """
    variants = ("fp16", None) if prefer_half else (None, "fp16")
    for ext in ("safetensors", "bin"):
        for variant in variants:
            for stem in WEIGHT_STEMS[ext]:
                name = f"{comp}/{stem}{'.' + variant if variant else ''}.{ext}"
                if name in names:
                    return name, ext == "bin"
    sharded = sorted(n for n in names if n.startswith(f"{comp}/") and n.endswith(".index.json"))
    if sharded:
        raise GmkitError(f"{label}: {comp} weights are sharded ({sharded[0]}); gmkit reads single-file components only")
    found = sorted(n for n in names if n.startswith(f"{comp}/"))
    raise GmkitError(f"{label}: missing file {comp}/diffusion_pytorch_model.safetensors "
                     f"(found in {comp}/: {', '.join(Path(n).name for n in found) or 'nothing'})")


def read_weights(root: Path, rel: str, pickled: bool, allow_pickle: bool, label: str) -> dict[str, torch.Tensor]:
    if pickled:
        return load_pickled(root / rel, allow_pickle, label)
    return load_tensors(root / rel)[0]


def _check(cond: bool, label: str, what: str) -> None:
    if not cond:
        raise GmkitError(f"{label}: {what} is not supported by gmkit's engine")


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
    from ..nn.unet import UNetConfig

    c = {**UNET2D_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
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
    """A scheduler config -> (DiffusionConfig fields, sample defaults: which gmkit sampler and steps)."""
    where = f"{label} scheduler ({cls})"
    if cls not in SCHEDULER_DEFAULTS:
        raise GmkitError(f"{where}: unknown scheduler class (known: {', '.join(SCHEDULER_DEFAULTS)})")
    c = {**SCHEDULER_DEFAULTS[cls], **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    _check(c.get("trained_betas") is None, where, "trained_betas")
    _check(c["beta_schedule"] in ("linear", "scaled_linear", "squaredcos_cap_v2"), where, f"beta_schedule={c['beta_schedule']!r}")
    _check(c["prediction_type"] in ("epsilon", "v_prediction"), where, f"prediction_type={c['prediction_type']!r}")
    _check(c["timestep_spacing"] in ("leading", "trailing", "linspace"), where, f"timestep_spacing={c['timestep_spacing']!r}")
    _check(not c.get("thresholding"), where, "thresholding=true")
    _check(not c.get("rescale_betas_zero_snr"), where, "rescale_betas_zero_snr=true")
    _check(c.get("clip_sample_range", 1.0) == 1.0, where, f"clip_sample_range={c.get('clip_sample_range')}")
    _check(c.get("variance_type") in (None, "fixed_small", "fixed_small_log"), where, f"variance_type={c.get('variance_type')!r}")
    # A spacing the config leaves out is each scheduler class's default, as when diffusers users
    # swap schedulers with from_config: leading for DDPM/DDIM, linspace for DPM-Solver++.
    spacing = cfg.get("timestep_spacing")
    settings = {"num_train_timesteps": int(c["num_train_timesteps"]), "beta_schedule": c["beta_schedule"],
                "beta_start": float(c["beta_start"]), "beta_end": float(c["beta_end"]),
                "prediction_type": c["prediction_type"], "clip_sample": bool(c.get("clip_sample", False)),
                "timestep_spacing": spacing or "leading", "steps_offset": int(c["steps_offset"]),
                "solver_spacing": spacing or "linspace",
                # DDIM's final alpha: as written, else DDIM's default (what DDIMScheduler.from_config gives)
                "set_alpha_to_one": bool(cfg.get("set_alpha_to_one", True))}
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
    from ..nn.autoencoder_vq import VQModelConfig

    c = {**VQMODEL_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    where = f"{label} vqvae"
    chs = _autoencoder_channels(c, where)
    _check(c["norm_type"] == "group", where, f"norm_type={c['norm_type']!r}")
    config = VQModelConfig(in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]),
                           latent_channels=int(c["latent_channels"]), block_out_channels=chs,
                           layers_per_block=int(c["layers_per_block"]), norm_num_groups=int(c["norm_num_groups"]),
                           mid_attention=bool(c["mid_block_add_attention"]),
                           num_vq_embeddings=int(c["num_vq_embeddings"]),
                           vq_embed_dim=int(c["vq_embed_dim"] if c["vq_embed_dim"] is not None else c["latent_channels"]))
    return config, float(c["scaling_factor"])


def unet2d_condition_config(cfg: dict, label: str):
    """A ``UNet2DConditionModel`` config.json (Stable Diffusion 1.x/2.x) -> gmkit ``UNetConfig``."""
    from ..nn.unet import UNetConfig

    c = {**UNET2D_CONDITION_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
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
    from ..nn.autoencoder_kl import AutoencoderKLConfig

    c = {**AUTOENCODER_KL_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
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


# -- key renaming ---------------------------------------------------------------------------------

# Attention weights of checkpoints saved before diffusers 0.14 carry the old names.
_OLD_ATTENTION = ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0."))


def rename_key(key: str) -> str:
    """A diffusers parameter name -> gmkit's (the modules share the reference names; only the
    pre-0.14 attention names differ)."""
    for old, new in _OLD_ATTENTION:
        key = key.replace(old, new)
    return key


def renamed(state: dict[str, torch.Tensor], prefix: str, rename: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    rename = rename or rename_key  # looked up at call time, so a test can swap in a wrong mapping
    return {prefix + rename(k): v for k, v in state.items()}


# -- the pipelines --------------------------------------------------------------------------------

def _plan(files: RepoFiles, pipeline: str, comps: dict[str, str], prefer_half: bool) -> tuple[list[str], dict[str, tuple[str, bool]]]:
    need = ["model_index.json"]
    weights: dict[str, tuple[str, bool]] = {}
    for comp in PIPELINES[pipeline]:
        if comp == "scheduler":
            need.append("scheduler/scheduler_config.json")
            continue
        if comp == "tokenizer":
            need += sorted(n for n in files.names if n.startswith("tokenizer/"))
            if not any(n.startswith("tokenizer/") for n in need):
                raise GmkitError(f"{files.label}: missing folder tokenizer/")
            continue
        need.append(f"{comp}/config.json")
        weights[comp] = choose_weights(files.names, comp, prefer_half, files.label)
        need.append(weights[comp][0])
    missing = [p for p in need if p not in files.names]
    if missing:
        raise GmkitError(f"{files.label}: missing file {missing[0]}")
    return need, weights


def resolve_pipeline(files: RepoFiles, allow_pickle: bool = False, prefer_half: bool = False):
    """A diffusers pipeline -> ``gmkit.registry.Resolved`` (family, config, renamed weights, defaults)."""
    from ..registry import Resolved

    label = files.label
    root = files.fetch(["model_index.json"])
    index = read_json(root / "model_index.json", label, "model_index.json")
    pipeline = str(index.get("_class_name", ""))
    comps = components(index)
    if pipeline not in PIPELINES:
        found = ", ".join(f"{k} ({v})" for k, v in comps.items()) or "no components"
        raise GmkitError(f"{label}: {pipeline or 'an unnamed pipeline'} is not supported (gmkit runs "
                         f"{', '.join(PIPELINES)}); found {found}")
    for comp, accepted in PIPELINES[pipeline].items():
        if comp not in comps:
            raise GmkitError(f"{label}: {pipeline} without a {comp} component in model_index.json")
        _check(comps[comp] in accepted, label, f"{comp} of class {comps[comp]}")
    need, weights = _plan(files, pipeline, comps, prefer_half)
    root = files.fetch(need)

    sched_cls = comps["scheduler"]
    settings, defaults = scheduler_settings(sched_cls, read_json(root / "scheduler/scheduler_config.json", label,
                                                                  "scheduler/scheduler_config.json"), label)
    meta = {"gmkit.source": "diffusers", "diffusers.pipeline": pipeline, "diffusers.scheduler": sched_cls}
    if pipeline == "StableDiffusionPipeline":
        return _stable_diffusion(root, label, weights, settings, defaults, meta, allow_pickle)
    unet_cfg = unet2d_config(read_json(root / "unet/config.json", label, "unet/config.json"), label)
    state = renamed(read_weights(root, *weights["unet"], allow_pickle, label), "unet.")
    if pipeline in ("DDPMPipeline", "DDIMPipeline"):
        from ..families.diffusion import Diffusion, DiffusionConfig

        config = DiffusionConfig(unet=unet_cfg, **settings)
        return Resolved(label, Path(root), Diffusion, config, state, {**meta, "gmkit.family": Diffusion.name}, defaults)
    if pipeline == "LDMPipeline":
        from ..families.vqldm import VQLatentDiffusion, VQLatentDiffusionConfig

        vq_cfg, scale = vqmodel_config(read_json(root / "vqvae/config.json", label, "vqvae/config.json"), label)
        if vq_cfg.latent_channels != unet_cfg.in_channels:
            raise GmkitError(f"{label}: the unet takes {unet_cfg.in_channels} channels but the vqvae's latent has "
                             f"{vq_cfg.latent_channels}")
        state.update(renamed(read_weights(root, *weights["vqvae"], allow_pickle, label), "vqvae."))
        config = VQLatentDiffusionConfig(unet=unet_cfg, vq=vq_cfg, scaling_factor=scale, **settings)
        return Resolved(label, Path(root), VQLatentDiffusion, config, state,
                        {**meta, "gmkit.family": VQLatentDiffusion.name}, defaults)
    raise AssertionError(pipeline)  # pragma: no cover - PIPELINES and this function list the same names


def _stable_diffusion(root: Path, label: str, weights: dict, settings: dict, defaults: dict, meta: dict,
                      allow_pickle: bool):
    """Stable Diffusion 1.x/2.x -> the ``ldm`` family: KL autoencoder, cross-attention UNet, CLIP prompts."""
    import functools

    from ..families.autoencoder import AutoencoderConfig
    from ..families.ldm import LDM, LDMConfig
    from ..nn.text import register_text_encoder
    from ..registry import Resolved
    from .clip import CLIPText

    unet_cfg = unet2d_condition_config(read_json(root / "unet/config.json", label, "unet/config.json"), label)
    vae_cfg, scale = autoencoder_kl_config(read_json(root / "vae/config.json", label, "vae/config.json"), label)
    if vae_cfg.latent_channels != unet_cfg.in_channels:
        raise GmkitError(f"{label}: the unet takes {unet_cfg.in_channels} channels but the vae's latent has "
                         f"{vae_cfg.latent_channels}")
    factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
    size = unet_cfg.sample_size * factor
    # The text encoder is not part of the gmkit state: it is named, and built from this folder on first use.
    encoder = f"diffusers-clip:{root.resolve()}"
    register_text_encoder(encoder, functools.partial(CLIPText, root, *weights["text_encoder"], allow_pickle, label))
    text_cfg = read_json(root / "text_encoder/config.json", label, "text_encoder/config.json")
    if text_cfg.get("hidden_size") not in (None, unet_cfg.cross_attention_dim):
        raise GmkitError(f"{label}: the text encoder's width {text_cfg.get('hidden_size')} differs from the unet's "
                         f"cross_attention_dim {unet_cfg.cross_attention_dim}")
    config = LDMConfig(image_size=size, in_channels=vae_cfg.in_channels,
                       autoencoder=AutoencoderConfig(in_channels=vae_cfg.in_channels, image_size=size, vae=vae_cfg,
                                                     scaling_factor=scale),
                       latent_scale=scale, unet=unet_cfg, text_encoder=encoder,
                       text_max_length=int(text_cfg.get("max_position_embeddings", 77)), **settings)
    state = renamed(read_weights(root, *weights["unet"], allow_pickle, label), "unet.")
    state.update(renamed(read_weights(root, *weights["vae"], allow_pickle, label), "autoencoder.vae."))
    return Resolved(label, Path(root), LDM, config, state, {**meta, "gmkit.family": LDM.name},
                    {**defaults, "guidance": 7.5})
