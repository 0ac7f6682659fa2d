"""Single-file Stable Diffusion 1.x/2.x checkpoints (the original CompVis key layout in one file).

Most community fine-tunes are shared as one ``.safetensors`` holding the whole model under the
names of the original LDM code: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (KL
autoencoder) and ``cond_stage_model.*`` (CLIP ViT-L/14 for SD 1.x in transformers' names; OpenCLIP
ViT-H for SD 2.x). Their keys are renamed once onto gmkit's modules, lazily (a renamed or sliced
``TensorRef`` points at the same bytes: nothing is read before ``build``).

The architecture comes from ``config`` (a diffusers pipeline folder or Hub id whose configs,
tokenizer and scheduler describe the checkpoint), or is inferred from the tensors: widths, depths,
attention levels and cross-attention width from their shapes; attention heads by the SD rule (8
heads for SD 1.x, 64-wide heads for SD 2.x); SD 2.x is taken as the 768-px v-prediction model,
SD 1.x as 512 px epsilon (as diffusers assumes without a config). The tokenizer of the inferred
case is CLIP's, from the Hub or its cache (``openai/clip-vit-large-patch14``;
``stabilityai/stable-diffusion-2-1`` for SD 2.x).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..checkpoint import LazyState, TensorRef, tensor_refs
from ..errors import GmkitError
from ..resolved import Resolved
from .clip import clip_key
from .diffusers import stable_diffusion
from .diffusers_configs import autoencoder_kl_config, read_json, scheduler_settings, unet2d_condition_config
from .hub import HubId, hub_repo, local_files, parse_hub_id

UNET, VAE, CLIP1, CLIP2 = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.", "cond_stage_model.model."
# SD's training schedule (v1-inference.yaml / v2-inference-v.yaml) as a diffusers scheduler config
SD_SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
                "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
TOKENIZERS = {1: HubId("openai/clip-vit-large-patch14", None, None), 2: HubId("stabilityai/stable-diffusion-2-1", None, "tokenizer")}
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
           "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def is_single_file(keys) -> bool:
    return any(k.startswith(UNET) for k in keys) and any(k.startswith(VAE) for k in keys)


def _sub(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if name.startswith(old + "."):
            return new + name[len(old):]
    return name


# -- the UNet ---------------------------------------------------------------------------------------

def _unet_layout(refs: dict[str, TensorRef]) -> tuple[int, list[int], list[int]]:
    """(layers per block, channels per level, attention levels) of the original UNet's input blocks."""
    ids = sorted({int(k.split(".")[3]) for k in refs if k.startswith(UNET + "input_blocks.")})
    downs = [i for i in ids if f"{UNET}input_blocks.{i}.0.op.weight" in refs]
    layers = (downs[0] - 1) if downs else len(ids) - 1
    levels = len(downs) + 1
    if layers < 1 or ids[-1] != levels * (layers + 1) - 1:
        raise GmkitError("single-file checkpoint: its UNet's input blocks do not follow the SD layout")
    chs = [refs[f"{UNET}input_blocks.{1 + lv * (layers + 1)}.0.out_layers.3.weight"].shape[0] for lv in range(levels)]
    attn = [lv for lv in range(levels) if f"{UNET}input_blocks.{1 + lv * (layers + 1)}.1.proj_in.weight" in refs]
    return layers, chs, attn


def unet_name(key: str, layers: int) -> str:
    """An original UNet parameter name (without ``model.diffusion_model.``) -> diffusers'/gmkit's."""
    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        i, part, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(i - 1, layers + 1)
        if j == layers:  # the downsampler closing a level
            return f"down_blocks.{level}.downsamplers.0.conv.{rest.removeprefix('op.')}"
        return (f"down_blocks.{level}.resnets.{j}.{_sub(rest, _RESNET)}" if part == 0
                else f"down_blocks.{level}.attentions.{j}.{rest}")
    m = re.match(r"middle_block\.(\d)\.(.*)", key)
    if m:
        part = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}[m[1]]
        return f"mid_block.{part}.{_sub(m[2], _RESNET) if part.startswith('resnets') else m[2]}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:
        i, part, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(i, layers + 1)
        if part == 0:
            return f"up_blocks.{level}.resnets.{j}.{_sub(rest, _RESNET)}"
        if rest.startswith("conv."):  # the upsampler (after the attention, when there is one)
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return f"up_blocks.{level}.attentions.{j}.{rest}"
    raise GmkitError(f"single-file checkpoint: unknown UNet tensor {UNET}{key}")


def infer_unet(refs: dict[str, TensorRef], version: int) -> dict:
    """A UNet2DConditionModel config.json from the tensors' shapes (and the SD heads rule)."""
    layers, chs, attn = _unet_layout(refs)
    if not attn:
        raise GmkitError("single-file checkpoint: its UNet has no cross-attention blocks (not Stable Diffusion)")
    first = f"{UNET}input_blocks.{1 + attn[0] * (layers + 1)}.1."
    depth = len({k.split(".")[6] for k in refs if k.startswith(first + "transformer_blocks.")})
    n = len(chs)
    return {"sample_size": 96 if version == 2 else 64, "in_channels": refs[UNET + "input_blocks.0.0.weight"].shape[1],
            "out_channels": refs[UNET + "out.2.weight"].shape[0], "block_out_channels": chs, "layers_per_block": layers,
            "down_block_types": ["CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n)],
            "up_block_types": ["CrossAttnUpBlock2D" if n - 1 - j in attn else "UpBlock2D" for j in range(n)],
            "cross_attention_dim": refs[first + "transformer_blocks.0.attn2.to_k.weight"].shape[1],
            "attention_head_dim": [max(1, c // 64) for c in chs] if version == 2 else 8,
            "use_linear_projection": len(refs[first + "proj_in.weight"].shape) == 2, "transformer_layers_per_block": depth}


# -- the autoencoder ------------------------------------------------------------------------------

def vae_name(key: str, levels: int) -> str:
    """An original KL-autoencoder name (without ``first_stage_model.``) -> diffusers'/gmkit's."""
    key = key.replace("nin_shortcut", "conv_shortcut")
    for side in ("encoder", "decoder"):
        key = key.replace(f"{side}.norm_out.", f"{side}.conv_norm_out.")
        key = key.replace(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.")
        key = key.replace(f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.")
        m = re.match(rf"{side}\.mid\.attn_1\.(\w+)\.(.*)", key)
        if m:
            return f"{side}.mid_block.attentions.0.{_VAE_ATTN[m[1]]}.{m[2]}"
    m = re.match(r"encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.*)", key)
    if m:
        return (f"encoder.down_blocks.{m[1]}.resnets.{m[3]}.{m[4]}" if m[3] is not None
                else f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[4]}")
    m = re.match(r"decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.*)", key)
    if m:  # the original counts decoder levels from the smallest resolution up; diffusers the other way
        level = levels - 1 - int(m[1])
        return (f"decoder.up_blocks.{level}.resnets.{m[3]}.{m[4]}" if m[3] is not None
                else f"decoder.up_blocks.{level}.upsamplers.0.{m[4]}")
    return key


def infer_vae(refs: dict[str, TensorRef]) -> dict:
    levels = len({k.split(".")[3] for k in refs if k.startswith(VAE + "encoder.down.")})
    chs = [refs[f"{VAE}encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    layers = len({k.split(".")[5] for k in refs if k.startswith(VAE + "encoder.down.0.block.")})
    return {"in_channels": refs[VAE + "encoder.conv_in.weight"].shape[1], "out_channels": refs[VAE + "decoder.conv_out.weight"].shape[0],
            "latent_channels": refs[VAE + "post_quant_conv.weight"].shape[0], "block_out_channels": chs,
            "layers_per_block": layers, "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels, "sample_size": 512}


# -- the text encoder -----------------------------------------------------------------------------

def _openclip(refs: dict[str, TensorRef]) -> dict[str, TensorRef]:
    """SD 2.x's OpenCLIP text tower -> transformers' CLIPTextModel names; the fused q/k/v projections are
    sliced by byte range, and the last layer dropped (SD 2.x reads the penultimate one)."""
    blocks = sorted({int(k.split(".")[4]) for k in refs if k.startswith(CLIP2 + "transformer.resblocks.")})
    out = {"text_model.embeddings.token_embedding.weight": refs[CLIP2 + "token_embedding.weight"],
           "text_model.final_layer_norm.weight": refs[CLIP2 + "ln_final.weight"],
           "text_model.final_layer_norm.bias": refs[CLIP2 + "ln_final.bias"]}
    pos = refs[CLIP2 + "positional_embedding"]
    out["text_model.embeddings.position_embedding.weight"] = pos
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for b in blocks[:-1]:
        src, dst = f"{CLIP2}transformer.resblocks.{b}.", f"text_model.encoder.layers.{b}."
        for old, new in names.items():
            for p in ("weight", "bias"):
                out[f"{dst}{new}.{p}"] = refs[f"{src}{old}.{p}"]
        for p in ("weight", "bias"):
            fused = refs[f"{src}attn.in_proj_{p}"]
            d = fused.shape[0] // 3
            row = (fused.end - fused.start) // 3
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{dst}self_attn.{proj}.{p}"] = dataclasses.replace(
                    fused, start=fused.start + i * row, end=fused.start + (i + 1) * row, shape=(d, *fused.shape[1:]))
    return out


def text_config(text: dict[str, TensorRef], version: int) -> dict:
    vocab, hidden = text["text_model.embeddings.token_embedding.weight"].shape
    layers = len({k.split(".")[3] for k in text if k.startswith("text_model.encoder.layers.")})
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": text["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0], "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // 64),
            "max_position_embeddings": text["text_model.embeddings.position_embedding.weight"].shape[0],
            "hidden_act": "gelu" if version == 2 else "quick_gelu", "projection_dim": 512 if version == 1 else 1024}


# -- the record -------------------------------------------------------------------------------------

def _config_source(config: str, token: str | None):
    """--config: a diffusers pipeline (folder or Hub id) read for its configs and tokenizer only."""
    path = Path(config).expanduser()
    if path.is_dir():
        files = local_files(path, config)
    else:
        hub = parse_hub_id(config)
        if hub is None:
            raise GmkitError(f"--config {config}: not a folder nor a Hub repo id")
        files = hub_repo(hub, token)
    need = ["unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"]
    need += sorted(n for n in files.names if n.startswith("tokenizer/"))
    missing = [p for p in need if p not in files.names]
    if missing or not any(n.startswith("tokenizer/") for n in need):
        raise GmkitError(f"--config {config}: not a Stable Diffusion pipeline (missing {missing[0] if missing else 'tokenizer/'})")
    return files.fetch(need), files.label


def resolve_single_file(path: Path, label: str, config: str | None = None, allow_pickle: bool = False,
                        prefer_half: bool = False, token: str | None = None) -> Resolved:
    refs = tensor_refs(path)
    if not is_single_file(refs):
        raise GmkitError(f"{label}: not a gmkit checkpoint (no gmkit.family in its metadata) nor a single-file Stable "
                         f"Diffusion checkpoint (no {UNET}* and {VAE}* tensors)")
    version = 2 if any(k.startswith(CLIP2) for k in refs) else 1
    if version == 1:
        text = {clip_key(k[len(CLIP1):]): v for k, v in refs.items() if k.startswith(CLIP1) and not k.endswith("position_ids")}
        if not text:
            raise GmkitError(f"{label}: a single-file checkpoint without its text encoder (no cond_stage_model.* tensors)")
    else:
        text = _openclip(refs)
    layers, chs, _ = _unet_layout(refs)
    state = LazyState({"unet." + unet_name(k[len(UNET):], layers): v for k, v in refs.items() if k.startswith(UNET)})
    levels = len({k.split(".")[3] for k in refs if k.startswith(VAE + "encoder.down.")})
    for k, v in refs.items():
        if k.startswith(VAE) and not k.startswith(VAE + "loss"):
            name = vae_name(k[len(VAE):], levels)
            if ".attentions.0.to_" in name and name.endswith("weight") and len(v.shape) == 4:
                v = dataclasses.replace(v, shape=tuple(v.shape[:2]))  # 1x1 convolutions -> linear layers
            state.entries["autoencoder.vae." + name] = v
    if config is not None:
        root, cfg_label = _config_source(config, token)
        unet_json, vae_json = read_json(root / "unet/config.json", cfg_label, "unet/config.json"), read_json(root / "vae/config.json", cfg_label, "vae/config.json")
        text_json = read_json(root / "text_encoder/config.json", cfg_label, "text_encoder/config.json")
        sched = read_json(root / "scheduler/scheduler_config.json", cfg_label, "scheduler/scheduler_config.json")
        sched_cls, tokenizer_dir = str(sched.get("_class_name", "PNDMScheduler")), root / "tokenizer"
    else:
        unet_json, vae_json, text_json = infer_unet(refs, version), infer_vae(refs), text_config(text, version)
        sched_cls = "PNDMScheduler"
        sched = {**SD_SCHEDULER, **({"prediction_type": "v_prediction"} if version == 2 else {})}
        tok = TOKENIZERS[version]
        files = hub_repo(tok, token)
        names = [n for n in files.names if n in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")]
        if "vocab.json" not in names or "merges.txt" not in names:
            raise GmkitError(f"{label}: CLIP's tokenizer files are missing from {tok.label}")
        tokenizer_dir = files.fetch(names)
    unet_cfg = unet2d_condition_config(unet_json, label)
    vae_cfg, scale = autoencoder_kl_config(vae_json, label)
    settings, defaults = scheduler_settings(sched_cls, sched, label)
    meta = {"gmkit.source": "single-file", "single_file.version": f"SD {version}.x"}
    return stable_diffusion(label, Path(path).parent, unet_cfg, vae_cfg, scale, settings, defaults, text_json,
                            Path(tokenizer_dir), state, LazyState(text), meta, {"single_file": Path(path).name})
