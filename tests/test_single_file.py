"""Single-file Stable Diffusion checkpoints (original CompVis key layout) load by renaming keys once.

The test writes a tiny pipeline's weights in the original layout (its own inverse mapping, checked
by diffusers' ``from_single_file``), then loads it through gmkit with the architecture named by
``--config`` and inferred from the tensors.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import run_cli  # noqa: E402
from hub_fixtures import NET_TOL, cache_repo, rel_err, tiny_sd_pipeline  # noqa: E402

from gmkit.errors import GmkitError  # noqa: E402
from gmkit.registry import load  # noqa: E402

_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
        "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0",
          "conv_norm_out": "out.0", "conv_out": "out.2"}


def _res(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RES[head]}.{tail}"


def unet_original(k: str, layers: int, attn_up: set[int]) -> str:
    """diffusers' UNet2DConditionModel name -> the original LDM name (the inverse of what gmkit reads)."""
    for new, old in _FIXED.items():
        if k.startswith(new + "."):
            return old + k[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", k):
        lv, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{(lv + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
        return f"input_blocks.{1 + lv * (layers + 1) + j}.{0 if kind == 'resnets' else 1}.{_res(rest) if kind == 'resnets' else rest}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", k):
        idx = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{m[1]}.{m[2]}"]
        return f"middle_block.{idx}.{_res(m[3]) if m[1] == 'resnets' else m[3]}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", k)
    lv, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    if kind == "upsamplers":
        return f"output_blocks.{lv * (layers + 1) + layers}.{2 if lv in attn_up else 1}.{rest}"
    return f"output_blocks.{lv * (layers + 1) + j}.{0 if kind == 'resnets' else 1}.{_res(rest) if kind == 'resnets' else rest}"


def vae_original(k: str, levels: int) -> str:
    k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    k = k.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
    for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        k = k.replace(f"mid_block.attentions.0.{new}.", f"mid.attn_1.{old}.")
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", k)
    return re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", k)


def write_single_file(pipe, path) -> None:
    from safetensors.torch import save_file

    cfg = pipe.unet.config
    n = len(cfg.block_out_channels)
    attn_up = {j for j, t in enumerate(cfg.up_block_types) if t.startswith("CrossAttn")}
    state = {"model.diffusion_model." + unet_original(k, cfg.layers_per_block, attn_up): v
             for k, v in pipe.unet.state_dict().items()}
    for k, v in pipe.vae.state_dict().items():
        name = vae_original(k, len(pipe.vae.config.block_out_channels))
        state["first_stage_model." + name] = v[:, :, None, None] if ".attn_1." in name and v.ndim == 2 else v
    for k, v in pipe.text_encoder.state_dict().items():
        state["cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k] = v
    assert n == 2
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.fixture(scope="session")
def single(tmp_path_factory):
    """A tiny SD 1.x model sized so the SD rules infer its architecture (32 groups, 8 heads, 64-wide CLIP heads)."""
    base = tmp_path_factory.mktemp("single")
    pipe = tiny_sd_pipeline(base, unet_kw=dict(block_out_channels=(32, 64), norm_num_groups=32, attention_head_dim=8,
                                               cross_attention_dim=64),
                            vae_kw=dict(block_out_channels=(32, 32), norm_num_groups=32),
                            text_kw=dict(hidden_size=64, num_attention_heads=1, intermediate_size=128))
    pipe.save_pretrained(base / "sd")
    write_single_file(pipe, base / "tiny-v1-5-pruned-emaonly.safetensors")
    return base, pipe


def _check(net, pipe):
    g = torch.Generator().manual_seed(7)
    z, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 901]), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        assert rel_err(net.unet(z, t, context=ctx), pipe.unet(z, t, encoder_hidden_states=ctx).sample) <= NET_TOL
        assert rel_err(net.autoencoder.vae.decode(z), pipe.vae.decode(z).sample) <= NET_TOL
        ids = pipe.tokenizer(["a red apple"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert rel_err(net.text.encode(["a red apple"])[0], pipe.text_encoder(ids)[0]) <= NET_TOL


def test_the_test_file_is_what_diffusers_reads_as_a_single_file(single):
    base, pipe = single
    ref = diffusers.StableDiffusionPipeline.from_single_file(str(base / "tiny-v1-5-pruned-emaonly.safetensors"),
                                                             config=str(base / "sd"))
    for a, b in ((ref.unet, pipe.unet), (ref.vae, pipe.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_single_file_with_config_matches_the_pipeline(single):
    base, pipe = single
    net, src = load(str(base / "tiny-v1-5-pruned-emaonly.safetensors"), config=str(base / "sd"))
    assert net.name == "ldm" and src.meta["gmkit.source"] == "single-file"
    _check(net, pipe)


def test_single_file_architecture_inferred_from_the_tensors(single, tmp_path, monkeypatch):
    base, pipe = single
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    tok = tmp_path / "clip-vit-large-patch14"  # the files of CLIP's repo that a tokenizer needs
    shutil.copytree(base / "sd" / "tokenizer", tok)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(base / "vocab" / name, tok / name)
    cache_repo(tmp_path / "cache", "openai/clip-vit-large-patch14", tok)
    net, src = load(str(base / "tiny-v1-5-pruned-emaonly.safetensors"))
    c = net.config
    assert (c.unet.block_out_channels, c.unet.attention_blocks, c.unet.cross_attention_dim) == ([32, 64], [0], 64)
    assert (c.prediction_type, c.steps_offset, c.image_size) == ("epsilon", 1, 128)
    _check(net, pipe)
    r = run_cli("sample", str(base / "tiny-v1-5-pruned-emaonly.safetensors"), "--prompt", "a red apple", "--steps", "2",
                "--height", "64", "--width", "96", "--out", str(tmp_path / "x.png"), "--quiet")
    assert r.code == 0, r.err
    from PIL import Image

    assert Image.open(tmp_path / "x.png").size == (96, 64)


def test_not_a_single_file_checkpoint_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(GmkitError, match="nor a single-file Stable Diffusion checkpoint"):
        load(str(tmp_path / "x.safetensors"))


def test_sd2_single_file_with_openclip_text_tower(tmp_path, monkeypatch):
    """SD 2.x: OpenCLIP's fused q/k/v are split, its last block dropped (SD 2 reads the penultimate layer),
    linear projections and 64-wide heads inferred, v-prediction assumed."""
    from safetensors.torch import save_file

    pipe = tiny_sd_pipeline(tmp_path, unet_kw=dict(block_out_channels=(64, 128), norm_num_groups=32, cross_attention_dim=64,
                                                   use_linear_projection=True, attention_head_dim=(1, 2)),
                            vae_kw=dict(block_out_channels=(32, 32), norm_num_groups=32),
                            text_kw=dict(hidden_size=64, num_attention_heads=1, intermediate_size=128, hidden_act="gelu"))
    write_single_file(pipe, tmp_path / "sd1-style.safetensors")
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(str(tmp_path / "sd1-style.safetensors")).items() if not k.startswith("cond_stage_model.")}
    text = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    oc = "cond_stage_model.model."
    state[oc + "token_embedding.weight"] = text["embeddings.token_embedding.weight"]
    state[oc + "positional_embedding"] = text["embeddings.position_embedding.weight"]
    state[oc + "ln_final.weight"], state[oc + "ln_final.bias"] = text["final_layer_norm.weight"], text["final_layer_norm.bias"]
    state[oc + "text_projection"] = torch.zeros(64, 64)
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for b in range(3):  # one block more than the text encoder has: SD 2 drops it
        src, dst = f"encoder.layers.{min(b, 1)}.", f"{oc}transformer.resblocks.{b}."
        for new, old in names.items():
            for p in ("weight", "bias"):
                state[f"{dst}{old}.{p}"] = text[f"{src}{new}.{p}"] + (b == 2)
        for p in ("weight", "bias"):
            state[f"{dst}attn.in_proj_{p}"] = torch.cat([text[f"{src}self_attn.{q}_proj.{p}"] for q in "qkv"]) + (b == 2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "sd2.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    tok = tmp_path / "sd2-repo" / "tokenizer"
    shutil.copytree(tmp_path / "vocab", tok)
    cache_repo(tmp_path / "cache", "stabilityai/stable-diffusion-2-1", tmp_path / "sd2-repo")
    net, _ = load(str(tmp_path / "sd2.safetensors"))
    c = net.config
    assert (c.prediction_type, c.unet.use_linear_projection, c.unet.head_dim, c.unet.num_heads) == ("v_prediction", True, 64, 0)
    _check(net, pipe)
