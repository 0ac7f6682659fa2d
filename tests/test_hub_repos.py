"""Public checkpoints as they are laid out on the Hub, from a fake Hugging Face cache (tests/hub_fixtures.py).

Each repo loads by its id with ``HF_HUB_OFFLINE=1``, and samples match diffusers' own pipelines
loaded from the same snapshot, where diffusers is right.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import run_cli  # noqa: E402
from hub_fixtures import (CIFAR_UNET, NET_TOL, RUN_TOL, as_np_images, cache_repo, ddpm_cifar_repo, gens,  # noqa: E402
                          ldm_celebahq_repo, randomize, rel_err, safetensors_twin, sd15_repo, sharded_ddpm_repo,
                          tiny_sd_pipeline)

from gmkit.errors import GmkitError  # noqa: E402
from gmkit.interop.hub import parse_hub_id  # noqa: E402
from gmkit.registry import build, load, resolve  # noqa: E402

STEPS = 10
CIFAR, CELEBAHQ, SD15, SHARDED = ("google/ddpm-cifar10-32", "CompVis/ldm-celebahq-256",
                                  "stable-diffusion-v1-5/stable-diffusion-v1-5", "tiny-org/ddpm-sharded")


def tiny_unet2d(**kw):
    cfg = {k: v for k, v in CIFAR_UNET.items() if not k.startswith("_")}
    cfg.update(block_out_channels=[8, 16], down_block_types=["DownBlock2D", "AttnDownBlock2D"],
               up_block_types=["AttnUpBlock2D", "UpBlock2D"], sample_size=8, **kw)
    return randomize(diffusers.UNet2DModel(**cfg), 21)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    src, cache = tmp_path_factory.mktemp("hub-src"), tmp_path_factory.mktemp("hub-cache")
    snaps = {CIFAR: cache_repo(cache, CIFAR, ddpm_cifar_repo(src / "cifar"))}
    celeb = ldm_celebahq_repo(src / "celeb")
    snaps[CELEBAHQ] = cache_repo(cache, CELEBAHQ, celeb)
    snaps[CELEBAHQ + "@refs/pr/1"] = cache_repo(cache, CELEBAHQ, safetensors_twin(celeb, src / "celeb-pr1"), ref="refs/pr/1")
    pipe = tiny_sd_pipeline(src)
    snaps[SD15] = cache_repo(cache, SD15, sd15_repo(pipe, src / "sd15"))
    unet = tiny_unet2d()
    snaps[SHARDED] = cache_repo(cache, SHARDED, sharded_ddpm_repo(src / "sharded", unet))

    def snapshot(key: str):
        repo = key.split("@")[0]
        return cache / ("models--" + repo.replace("/", "--")) / "snapshots" / snaps[key]

    return SimpleNamespace(cache=cache, snapshot=snapshot, sd_pipe=pipe, sharded_unet=unet)


@pytest.fixture
def hub(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache.cache))
    return hub_cache


# -- google/ddpm-cifar10-32: flat, fixed_large --------------------------------------------------

def test_flat_repo_loads_from_the_root_and_samples_like_diffusers_with_fixed_large(hub):
    net, src = load(CIFAR)
    assert src.defaults == {"sampler": "ddpm"} and net.config.variance_type == "fixed_large"
    assert src.files["unet.folder"] == "" and src.files["unet.weights"] == "diffusion_pytorch_model.safetensors"
    pipe = diffusers.DDPMPipeline.from_pretrained(hub.snapshot(CIFAR))  # diffusers too falls back to the root
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.variance_type == "fixed_large"
    ref = pipe(batch_size=2, generator=gens(), num_inference_steps=STEPS, output_type="np").images
    assert rel_err(as_np_images(net.sample(gens(), sampler="ddpm", steps=STEPS)), ref) <= RUN_TOL
    net.process.variance_type = "fixed_small"  # the step variance matters: the wrong one is far off
    assert rel_err(as_np_images(net.sample(gens(), sampler="ddpm", steps=STEPS)), ref) > 1e-2


def test_cli_samples_the_readme_example(hub, tmp_path):
    r = run_cli("sample", CIFAR, "--steps", "4", "-n", "2", "--out", str(tmp_path / "c.png"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["sampler"] == "ddpm"


def test_learned_range_reads_the_variance_the_unet_predicts(tmp_path):
    unet = tiny_unet2d(out_channels=6)
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
    net, _ = load(str(tmp_path))
    assert net.config.variance_type == "learned_range" and net.image_shape == (3, 8, 8)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=gens(), num_inference_steps=STEPS, output_type="np").images
    assert rel_err(as_np_images(net.sample(gens(), sampler="ddpm", steps=STEPS)), ref) <= RUN_TOL
    assert net.sample(gens(), sampler="ddim", steps=3).shape == (2, 3, 8, 8)  # other samplers read eps only
    cfg = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "variance_type": "fixed_small"}))
    with pytest.raises(GmkitError, match="6 channels out for 3 in.*learned_range"):
        load(str(tmp_path))


# -- CompVis/ldm-celebahq-256: pickles only, no scaling factor, a refs/pr/1 with safetensors ---------

def test_pickle_only_repo_needs_allow_pickle_and_decodes_unscaled(hub):
    with pytest.raises(GmkitError, match="--allow-pickle"):
        load(CELEBAHQ)
    net, src = load(CELEBAHQ, allow_pickle=True)
    assert net.name == "vqldm" and net.config.scaling_factor == 1.0
    pipe = diffusers.LDMPipeline.from_pretrained(hub.snapshot(CELEBAHQ))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vqvae.config.scaling_factor == 0.18215  # diffusers' default (huggingface/diffusers#6725) ...
    pipe.vqvae.register_to_config(scaling_factor=1.0)  # ... where 1.0 is right: compare there
    ref = pipe(batch_size=2, generator=gens(), num_inference_steps=STEPS, eta=0.0, output_type="np").images
    assert rel_err(as_np_images(net.sample(gens(), sampler="ddim", steps=STEPS)), ref) <= RUN_TOL


def test_pr_revision_with_safetensors_by_inline_ref_and_by_option(hub):
    a = resolve(CELEBAHQ + "@refs/pr/1")
    b = resolve(CELEBAHQ, revision="refs/pr/1")
    assert a.files["unet.weights"] == b.files["unet.weights"] == "unet/diffusion_pytorch_model.safetensors"
    main = resolve(CELEBAHQ, allow_pickle=True)
    for k in ("unet.conv_in.weight", "vqvae.quantize.embedding.weight"):
        assert torch.equal(a.state[k], main.state[k])
    import gmkit

    model = gmkit.load(CELEBAHQ, device="cpu", revision="refs/pr/1")  # the Python API takes the same options
    assert torch.equal(model.net.unet.conv_in.weight, main.state["unet.conv_in.weight"])
    with pytest.raises(GmkitError, match="give one"):
        resolve(CELEBAHQ + "@refs/pr/1", revision="main")
    with pytest.raises(GmkitError, match="not in the local Hugging Face cache"):
        resolve(CELEBAHQ, revision="refs/pr/2")


def test_hub_ids_parse_revisions_with_slashes():
    assert parse_hub_id("org/name@refs/pr/3") == parse_hub_id("org/name", revision="refs/pr/3")
    h = parse_hub_id("org/name@refs/pr/3/unet")
    assert (h.repo, h.revision, h.subfolder) == ("org/name", "refs/pr/3", "unet")
    h = parse_hub_id("org/name@v1.0/sub/dir")
    assert (h.revision, h.subfolder) == ("v1.0", "sub/dir")
    assert parse_hub_id("org/name").revision is None and parse_hub_id("not an id") is None


def test_cli_revision_and_token_options(hub, tmp_path):
    out = tmp_path / "x.png"
    r = run_cli("sample", CELEBAHQ, "--revision", "refs/pr/1", "--token", "hf_unused_offline", "--steps", "2", "-n", "1",
                "--out", str(out), "--quiet")
    assert r.code == 0, r.err
    r = run_cli("sample", "ddpm", "--revision", "main", "--out", str(out))
    assert r.code == 2 and "applies to Hub repos" in r.err


# -- stable-diffusion-v1-5: fp16 variants, pickles beside safetensors ------------------------------

def test_sd15_layout_reads_the_fp16_variant_for_half_dtypes(hub):
    half = resolve(SD15, prefer_half=True)
    assert half.files["unet.weights"] == "unet/diffusion_pytorch_model.fp16.safetensors"
    assert half.files["text_encoder.weights"] == "text_encoder/model.fp16.safetensors"
    assert half.state["unet.conv_in.weight"].dtype == torch.float16
    full = resolve(SD15)
    assert full.files["unet.weights"] == "unet/diffusion_pytorch_model.safetensors"
    net = build(full)
    pipe = hub.sd_pipe
    g = torch.Generator().manual_seed(7)
    z, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 901]), torch.randn(2, 77, 16, generator=g)
    with torch.no_grad():
        assert rel_err(net.unet(z, t, context=ctx), pipe.unet(z, t, encoder_hidden_states=ctx).sample) <= NET_TOL
        ids = pipe.tokenizer(["a red apple"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert rel_err(net.text.encode(["a red apple"])[0], pipe.text_encoder(ids)[0]) <= NET_TOL
    bf16 = build(half, dtype=torch.bfloat16)
    assert next(bf16.unet.parameters()).dtype == torch.bfloat16


def test_sd_pipeline_samples_dpmpp_2m_karras_at_any_size(hub, tmp_path):
    """Any sampler with any schedule on a Stable Diffusion repo: "DPM++ 2M Karras" visits Karras et al.'s
    levels between the model's own sigma_min and sigma_max, also with --height/--width."""
    from gmkit.diffusion.schedules import karras_sigmas

    net, _ = load(SD15)
    kw = dict(prompt="a red apple", sampler="dpm++2m", steps=4)
    seen = []
    karras = net.sample(gens(), schedule="karras", callback=lambda i, s, x: seen.append(s), **kw)
    p = net.process
    assert torch.allclose(torch.tensor(seen, dtype=torch.float64), karras_sigmas(4, p.sigma_min, p.sigma_max)[:-1].double())
    assert karras.shape == (2, 3, 16, 16) and bool(torch.isfinite(karras).all())
    assert torch.equal(karras, net.sample(gens(), schedule="karras", **kw))  # deterministic
    assert rel_err(karras, net.sample(gens(), **kw)) > 1e-3  # not the model's own (discrete) levels
    out = tmp_path / "k.png"
    r = run_cli("sample", SD15, "--prompt", "a red apple", "--sampler", "dpm++2m", "--schedule", "karras", "--steps", "3",
                "-n", "1", "--height", "24", "--width", "32", "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert {k: json.loads(r.out)[k] for k in ("sampler", "schedule")} == {"sampler": "dpm++2m", "schedule": "karras"}
    from PIL import Image

    assert Image.open(out).size == (32, 24)


# -- sharded weights --------------------------------------------------------------------------------

def test_sharded_unet_loads_from_its_index(hub):
    net, src = load(SHARDED)
    assert src.files["unet.weights"].count(",") >= 1  # several shards
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 700])
    with torch.no_grad():
        assert rel_err(net.unet(x, t), hub.sharded_unet(x, t).sample) <= NET_TOL


# -- no network, no HF_HUB_OFFLINE: the cache, at once ----------------------------------------------

def test_unreachable_hub_falls_back_to_the_cache_quietly(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    r = run_cli("sample", CIFAR, "--steps", "2", "-n", "1", "--out", str(tmp_path / "x.png"))
    assert r.code == 0, r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert sum("Hub is unreachable" in line for line in lines) == 1 and not any("Retry" in line for line in lines)
    r = run_cli("sample", "tiny-org/never-cached", "--out", str(tmp_path / "y.png"))
    assert r.code == 2 and "cannot reach the Hugging Face Hub" in r.err and len(r.err.strip().splitlines()) == 1


# -- 2022-era names and keys ----------------------------------------------------------------------

def test_legacy_class_names_and_config_keys(hub, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(hub.snapshot(CIFAR), old)
    index = json.loads((old / "model_index.json").read_text())
    (old / "model_index.json").write_text(json.dumps({**index, "_class_name": "DDPM", "unet": ["diffusers", "UNetUnconditionalModel"]}))
    sched = json.loads((old / "scheduler_config.json").read_text())
    del sched["num_train_timesteps"]
    (old / "scheduler_config.json").write_text(json.dumps({**sched, "timesteps": 500, "tensor_format": "pt"}))
    cfg = json.loads((old / "config.json").read_text())
    cfg["down_block_types"] = ["UNetResDownBlock2D", "UNetResAttnDownBlock2D", "UNetResDownBlock2D", "UNetResDownBlock2D"]
    cfg["image_size"] = cfg.pop("sample_size")
    (old / "config.json").write_text(json.dumps(cfg))
    net, _ = load(str(old))
    assert net.config.num_train_timesteps == 500 and net.config.unet.attention_blocks == [1]
    assert net.config.unet.sample_size == 16


# -- loading: every family on the meta device, weights straight into their dtype ------------------

@pytest.mark.parametrize("name", ["ddpm", "vae", "vqvae", "augvae", "gan", "flow", "score", "ldm", "sr"])
def test_every_bundled_family_builds_on_meta_and_assigns_its_weights(name):
    r = resolve(name)
    net = build(r, dtype=torch.bfloat16)
    tensors = dict(net.state_dict())
    assert not any(t.is_meta for t in tensors.values())
    for k, v in tensors.items():
        stored = r.state[k]
        assert v.dtype == torch.bfloat16 or not v.is_floating_point(), k  # integer buffers keep the module's dtype
        assert torch.equal(v, stored.to(v.dtype)), k
