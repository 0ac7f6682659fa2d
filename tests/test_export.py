"""``gmkit export MODEL --format diffusers OUT/``: diffusers' own ``DiffusionPipeline.from_pretrained(OUT)``
samples the same images as gmkit (the interop tolerance), for pixel, VQ-latent and Stable-Diffusion-style models."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import run_cli  # noqa: E402
from hub_fixtures import RUN_TOL, as_np_images, gens, ldm_celebahq_repo, rel_err, tiny_sd_pipeline  # noqa: E402

from gmkit.registry import load  # noqa: E402

STEPS = 10


def _pipeline(path):
    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name,pipeline", [("ddpm", "DDPMPipeline"), ("ddim", "DDIMPipeline")])
def test_bundled_ddpm_exports_to_a_pipeline_diffusers_samples_alike(name, pipeline, tmp_path):
    out = tmp_path / name
    r = run_cli("export", name, str(out), "--format", "diffusers", "--json")
    assert r.code == 0, r.err
    files = json.loads(r.out)["files"]
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json"} <= set(files)
    pipe = _pipeline(out)
    assert type(pipe).__name__ == pipeline
    net, _ = load(name)
    kw = {"eta": 0.0} if name == "ddim" else {}
    ref = pipe(batch_size=2, generator=gens(), num_inference_steps=STEPS, output_type="np", **kw).images
    ours = net.sample(gens(), sampler=name, steps=STEPS)
    assert rel_err(as_np_images(ours), ref) <= RUN_TOL
    again, _ = load(str(out))  # the exported folder is itself a gmkit source, with the same weights
    assert torch.equal(again.unet.conv_in.weight, net.unet.conv_in.weight)


def test_vq_latent_diffusion_exports_with_its_scaling_factor(tmp_path):
    src = ldm_celebahq_repo(tmp_path / "celeb")
    net, _ = load(str(src), allow_pickle=True)
    r = run_cli("export", str(src), str(tmp_path / "out"), "--allow-pickle", "--quiet")
    assert r.code == 0, r.err
    pipe = _pipeline(tmp_path / "out")
    assert type(pipe).__name__ == "LDMPipeline" and pipe.vqvae.config.scaling_factor == 1.0
    ref = pipe(batch_size=2, generator=gens(), num_inference_steps=STEPS, eta=0.0, output_type="np").images
    assert rel_err(as_np_images(net.sample(gens(), sampler="ddim", steps=STEPS)), ref) <= RUN_TOL


def test_stable_diffusion_exports_unet_vae_clip_and_tokenizer(tmp_path):
    tiny_sd_pipeline(tmp_path).save_pretrained(tmp_path / "sd")
    net, _ = load(str(tmp_path / "sd"))
    r = run_cli("export", str(tmp_path / "sd"), str(tmp_path / "out"), "--quiet")
    assert r.code == 0, r.err
    pipe = _pipeline(tmp_path / "out")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"  # what gmkit runs PNDM configs with
    prompts = ["a red apple", "a blue car"]
    ref = pipe(prompt=prompts, num_inference_steps=STEPS, guidance_scale=7.5, generator=gens(), output_type="np").images
    ours = net.sample(gens(), prompt=prompts, guidance=7.5, sampler="dpm++2m", steps=STEPS)
    assert rel_err(as_np_images(ours), ref) <= RUN_TOL


def test_what_cannot_be_exported_is_named(tmp_path):
    r = run_cli("export", "vae", str(tmp_path / "a"))
    assert r.code == 2 and "vae models have no diffusers pipeline" in r.err and "ddpm" in r.err
    r = run_cli("export", "ldm", str(tmp_path / "b"))
    assert r.code == 2 and "minilm" in r.err and "not CLIP" in r.err
    r = run_cli("export", "ddpm", str(tmp_path / "c"), "--format", "onnx")
    assert r.code == 2 and "--format onnx" in r.err


def test_push_writes_the_diffusers_form_with_a_model_card(tiny_run, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "upload"
    r = run_cli("push", str(tiny_run), "myname/tiny-ddpm", "--dry-run", "--format", "diffusers", "--out", str(out), "--json")
    assert r.code == 0, r.err
    files = set(json.loads(r.out)["files"])
    assert {"model_index.json", "README.md", "samples.png", "unet", "scheduler"} <= files
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "unconditional-image-generation"
    assert data["license"] == "cc-by-4.0"  # the digits' licence (scikit-learn's copy of the UCI set)
    assert "DiffusionPipeline.from_pretrained(\"myname/tiny-ddpm\")" in card.text
    assert "not on PyPI" in card.text and "\npip install gmkit\n" not in card.text
    assert str(tmp_path) not in card.text and "/tmp/" not in card.text  # no local paths, even from the recipe
    pipe = diffusers.DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "DDPMPipeline"


def test_model_card_header_for_openmoji_models():
    from gmkit.publish import card_data

    meta = {"gmkit.family": "ldm", "gmkit.recipe": json.dumps({"data": "openmoji:all", "data_license": "CC BY-SA 4.0 (OpenMoji)"})}
    data = card_data(meta).to_dict()
    assert (data["license"], data["pipeline_tag"], data["library_name"]) == ("cc-by-sa-4.0", "text-to-image", "gmkit")
    mnist = card_data({"gmkit.family": "ddpm", "gmkit.recipe": json.dumps({"data": "mnist"})}).to_dict()
    assert mnist["datasets"] == ["ylecun/mnist"]
