"""LoRA adapters merged at load time equal diffusers' ``load_lora_weights`` (PEFT applied at run time)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from conftest import run_cli  # noqa: E402
from hub_fixtures import NET_TOL, cache_repo, rel_err, tiny_sd_pipeline  # noqa: E402

from gmkit.errors import GmkitError  # noqa: E402
from gmkit.registry import load  # noqa: E402

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory):
    """A tiny SD pipeline, and a LoRA for its UNet and text encoder made with PEFT, saved as diffusers saves it."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    base = tmp_path_factory.mktemp("lora")
    pipe = tiny_sd_pipeline(base)
    pipe.save_pretrained(base / "sd")
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=UNET_TARGETS))
    # peft directly: transformers' own add_adapter wants a newer peft than the registry has
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=TEXT_TARGETS),
                            pipe.text_encoder)
    unet_layers, text_layers = get_peft_model_state_dict(pipe.unet), get_peft_model_state_dict(pipe.text_encoder)
    # with PEFT's configs as metadata, so alpha (8 for rank 4: a scale of 2) travels with the file
    diffusers.StableDiffusionPipeline.save_lora_weights(
        base / "peft", unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, safe_serialization=True,
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["default"].to_dict())
    # The same adapter in kohya's format: underscored module names, lora_down/lora_up, alpha per layer.
    kohya = {}
    for prefix, layers, alpha in (("lora_unet_", unet_layers, 8.0), ("lora_te_", text_layers, 2.0)):
        for k, v in layers.items():
            module, _, part = k.rpartition(".lora_")
            if prefix == "lora_te_" and not module.startswith("text_model."):
                module = "text_model." + module  # kohya names CLIP's layers text_model_encoder_layers_N_...
            name = prefix + module.replace(".", "_")
            kohya[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = v.contiguous()
            kohya[f"{name}.alpha"] = torch.tensor(alpha)
    (base / "kohya").mkdir()
    save_file(kohya, str(base / "kohya" / "style.safetensors"))
    return base


def _reference(base, scale: float = 1.0):
    ref = diffusers.StableDiffusionPipeline.from_pretrained(base / "sd")
    ref.load_lora_weights(base / "peft", adapter_name="a")
    ref.set_adapters(["a"], adapter_weights=[scale])
    return ref


def _compare(net, ref):
    g = torch.Generator().manual_seed(7)
    z, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 901]), torch.randn(2, 77, 16, generator=g)
    prompts = ["a red apple", "a blue car"]
    with torch.no_grad():
        unet_err = rel_err(net.unet(z, t, context=ctx), ref.unet(z, t, encoder_hidden_states=ctx).sample)
        ids = ref.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        text_err = rel_err(net.text.encode(prompts)[0], ref.text_encoder(ids)[0])
    return unet_err, text_err


@pytest.mark.parametrize("fmt,scale", [("peft", 1.0), ("peft", 0.5), ("kohya", 0.7)])
def test_merged_lora_equals_diffusers_load_lora_weights(lora_files, fmt, scale):
    path = lora_files / fmt / ("pytorch_lora_weights.safetensors" if fmt == "peft" else "style.safetensors")
    net, _ = load(str(lora_files / "sd"), lora=[f"{path}:{scale}"])
    unet_err, text_err = _compare(net, _reference(lora_files, scale))
    assert unet_err <= NET_TOL and text_err <= NET_TOL
    plain, _ = load(str(lora_files / "sd"))  # and the adapter does change the networks
    assert max(_compare(plain, _reference(lora_files, scale))) > 1e-3


def test_lora_from_a_hub_id_and_on_the_command_line(lora_files, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    cache_repo(tmp_path / "cache", "tiny-org/sd-lora", lora_files / "peft")
    net, _ = load(str(lora_files / "sd"), lora=["tiny-org/sd-lora"])
    assert max(_compare(net, _reference(lora_files))) <= NET_TOL
    r = run_cli("sample", str(lora_files / "sd"), "--lora", "tiny-org/sd-lora:0.8", "--lora",
                str(lora_files / "kohya" / "style.safetensors"), "--prompt", "a red apple", "--steps", "2",
                "--out", str(tmp_path / "x.png"), "--quiet")
    assert r.code == 0, r.err


def test_bad_lora_files_are_one_clear_line(lora_files, tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(GmkitError, match="no_such_layer is not in this model's unet"):
        load(str(lora_files / "sd"), lora=[str(tmp_path / "bad.safetensors")])
    save_file({"some.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    r = run_cli("sample", str(lora_files / "sd"), "--lora", str(tmp_path / "other.safetensors"), "--out", str(tmp_path / "y.png"))
    assert r.code == 2 and "not a LoRA file" in r.err and len(r.err.strip().splitlines()) == 1
    with pytest.raises(GmkitError, match="adapts a text_encoder"):
        load("ddpm", lora=[str(lora_files / "peft" / "pytorch_lora_weights.safetensors")])
