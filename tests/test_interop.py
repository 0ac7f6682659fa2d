"""diffusers-format pipelines run in gmkit's own engine, checked against diffusers itself.

Tiny random-weight diffusers models are saved with ``save_pretrained`` (also into a Hugging Face
cache layout) and loaded through gmkit by path and by repo id with ``HF_HUB_OFFLINE=1``. The
networks must agree to 1e-5 and whole sampling runs from the same noise to 1e-4 (relative to the
largest value); a deliberately wrong key mapping must be caught.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import run_cli  # noqa: E402
from hub_fixtures import NET_TOL, RUN_TOL, as_np_images, gens, randomize as _randomize, rel_err, tiny_sd_pipeline  # noqa: E402

from gmkit.errors import GmkitError  # noqa: E402
from gmkit.interop import diffusers as interop  # noqa: E402
from gmkit.interop import diffusers_configs as configs  # noqa: E402
from gmkit.interop.weights import Weights, choose_weights  # noqa: E402
from gmkit.registry import load, resolve  # noqa: E402

# RUN_TOL (hub_fixtures) sits near fp32's floor for a sampling run: the first step from pure noise divides
# the network's output by sqrt(alpha-bar_T) (about 1/150 for DDPM's linear schedule), so a 1e-6 network
# difference becomes ~1e-4 in x_0. Weights are therefore fixed by seed (hub_fixtures.randomize); a wrong
# mapping is off by orders of magnitude more (test_a_wrong_key_mapping_is_caught).
STEPS = 10


def tiny_unet(**kw) -> "diffusers.UNet2DModel":
    # The options google/ddpm-cifar10-32 uses where they differ from gmkit's own layout.
    args = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=4, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
                downsample_padding=0, norm_eps=1e-6)
    args.update(kw)
    return _randomize(diffusers.UNet2DModel(**args), 1)


def reference_run(pipe_cls, components: dict, scheduler_cls, scheduler_config, sampler: str, **kw):
    """diffusers' own pipeline with the scheduler that matches a gmkit sampler."""
    pipe = pipe_cls(**components, scheduler=scheduler_cls.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=gens(), num_inference_steps=STEPS, output_type="np", **kw).images


SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm++2m": "DPMSolverMultistepScheduler"}


@pytest.fixture(scope="session")
def ddpm_repo(tmp_path_factory):
    """A DDPMPipeline folder (UNet2DModel + DDPMScheduler) and the diffusers objects it was saved from."""
    path = tmp_path_factory.mktemp("diffusers") / "ddpm"
    unet = tiny_unet()
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    scheduler = diffusers.DDPMScheduler.from_pretrained(path, subfolder="scheduler")  # as users load it
    return path, unet, scheduler


def hf_cache_repo(folder: Path, hf_home: Path, repo: str) -> str:
    """Copy a folder into the Hugging Face cache layout; returns the commit hash it is filed under."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit, dirs_exist_ok=True)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return commit


# -- DDPM pipeline: network and samplers ----------------------------------------------------------

def test_unet2d_output_matches_diffusers(ddpm_repo):
    path, unet, _ = ddpm_repo
    net, src = load(str(path))
    assert net.name == "ddpm" and src.defaults == {"sampler": "ddpm"}
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([3, 777])
    with torch.no_grad():
        assert rel_err(net.unet(x, t), unet(x, t).sample) <= NET_TOL


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("ddim", 0.0), ("ddim", 1.0), ("dpm++2m", None)])
def test_ddpm_pipeline_sampling_matches_diffusers(ddpm_repo, sampler, eta):
    path, unet, scheduler = ddpm_repo
    net, _ = load(str(path))
    pipe_cls = diffusers.DDIMPipeline if sampler == "ddim" else diffusers.DDPMPipeline
    kw = {"eta": eta} if eta is not None else {}
    ref = reference_run(pipe_cls, {"unet": unet}, getattr(diffusers, SCHEDULERS[sampler]), scheduler.config, sampler, **kw)
    ours = net.sample(gens(), sampler=sampler, steps=STEPS, **({"eta": eta} if eta else {}))
    assert rel_err(as_np_images(ours), ref) <= RUN_TOL


def test_scheduler_config_is_honoured_v_prediction_trailing_scaled_linear(tmp_path):
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    unet = tiny_unet(flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, attention_head_dim=4)
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
    net, src = load(str(tmp_path))
    c = net.config
    assert (c.prediction_type, c.timestep_spacing, c.beta_schedule, c.clip_sample) == ("v_prediction", "trailing", "scaled_linear", False)
    assert src.defaults == {"sampler": "ddim", "steps": 50}
    ref = reference_run(diffusers.DDIMPipeline, {"unet": unet}, diffusers.DDIMScheduler, scheduler.config, "ddim", eta=0.0)
    assert rel_err(as_np_images(net.sample(gens(), sampler="ddim", steps=STEPS)), ref) <= RUN_TOL
    ref = reference_run(diffusers.DDPMPipeline, {"unet": unet}, diffusers.DPMSolverMultistepScheduler, scheduler.config, "dpm++2m")
    assert rel_err(as_np_images(net.sample(gens(), sampler="dpm++2m", steps=STEPS)), ref) <= RUN_TOL


def test_a_wrong_key_mapping_is_caught(ddpm_repo, monkeypatch):
    """The equivalence check can fail: swapping query and key projections (same shapes) must show."""
    path, unet, _ = ddpm_repo
    swap = {"to_q": "to_k", "to_k": "to_q"}
    monkeypatch.setattr(interop, "rename_key", lambda k: ".".join(swap.get(part, part) for part in k.split(".")))
    net, _ = load(str(path))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([3, 777])
    with torch.no_grad():
        assert rel_err(net.unet(x, t), unet(x, t).sample) > 1e-3
    # A mapping that loses a tensor is refused at load time, naming it.
    monkeypatch.setattr(interop, "rename_key", lambda k: k.replace("conv_out.", "conv_final."))
    with pytest.raises(GmkitError, match="weights do not match"):
        load(str(path))


def test_defaults_tables_match_the_installed_diffusers():
    """Keys an old config.json leaves out take diffusers' defaults; gmkit's copies must agree."""
    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def norm(v):
        return list(v) if isinstance(v, tuple) else v

    for table, cls in ((configs.UNET2D_DEFAULTS, diffusers.UNet2DModel), (configs.VQMODEL_DEFAULTS, diffusers.VQModel)):
        ref = defaults(cls)
        assert {k: norm(v) for k, v in table.items()} == {k: norm(ref[k]) for k in table}
    for name, table in configs.SCHEDULER_DEFAULTS.items():
        ref = defaults(getattr(diffusers, name))
        assert table == {k: ref[k] for k in table}, name


# -- sources: Hub cache, fp16 variants, CLI -------------------------------------------------------

def test_load_by_repo_id_from_the_hf_cache_offline(ddpm_repo, tmp_path, monkeypatch):
    path, unet, _ = ddpm_repo
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = hf_cache_repo(path, tmp_path / "hf", "tiny-org/ddpm-tiny")
    x = torch.randn(1, 3, 8, 8)
    t = torch.tensor([100])
    for source in ("tiny-org/ddpm-tiny", f"tiny-org/ddpm-tiny@{commit}"):
        net, src = load(source)
        assert src.source == source.replace(f"@{commit}", f"@{commit}")
        with torch.no_grad():
            assert rel_err(net.unet(x, t), unet(x, t).sample) <= NET_TOL
    with pytest.raises(GmkitError, match="HF_HUB_OFFLINE"):
        load("tiny-org/not-cached")


def test_fp16_variant_is_read_for_half_dtypes(ddpm_repo, tmp_path):
    path, unet, _ = ddpm_repo
    folder = tmp_path / "with-fp16"
    shutil.copytree(path, folder)
    half = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet").half()
    half.save_pretrained(folder / "unet", variant="fp16")
    assert resolve(str(folder), prefer_half=True).state["unet.conv_in.weight"].dtype == torch.float16
    assert resolve(str(folder)).state["unet.conv_in.weight"].dtype == torch.float32
    names = {"unet/diffusion_pytorch_model.fp16.safetensors"}  # only the variant: it serves fp32 too
    assert choose_weights(names, "unet", False, "x", "unet") == Weights(("unet/diffusion_pytorch_model.fp16.safetensors",), False)


def test_cli_samples_a_diffusers_folder_and_repo_id(ddpm_repo, tmp_path, monkeypatch):
    path, _, _ = ddpm_repo
    out = tmp_path / "grid.png"
    r = run_cli("sample", str(path), "--steps", "5", "-n", "2", "--sampler", "dpm++2m", "--out", str(out), "--quiet")
    assert r.code == 0, r.err
    assert out.stat().st_size > 0
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hf_cache_repo(path, tmp_path / "hf", "google/ddpm-tiny")
    r = run_cli("sample", "google/ddpm-tiny", "--steps", "5", "-n", "2", "--out", str(tmp_path / "b.png"), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["family"] == "ddpm" and report["sampler"] == "ddpm" and report["steps"] == 5


# -- pickles --------------------------------------------------------------------------------------

class NotATensor:  # a global that torch.load(weights_only=True) must refuse to rebuild
    pass


def _pickle_only(src: Path, dst: Path, extra=None) -> Path:
    shutil.copytree(src, dst)
    from safetensors.torch import load_file

    weights = dst / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    if extra is not None:
        state["extra"] = extra
    torch.save(state, dst / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return dst


def test_pickle_only_repo_is_refused_then_converted_once(ddpm_repo, tmp_path, monkeypatch):
    path, unet, _ = ddpm_repo
    folder = _pickle_only(path, tmp_path / "pickled")
    r = run_cli("sample", str(folder), "--steps", "2", "-n", "1", "--out", str(tmp_path / "x.png"))
    assert r.code == 2 and "--allow-pickle" in r.err and len(r.err.strip().splitlines()) == 1
    net, _ = load(str(folder), allow_pickle=True)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    with torch.no_grad():
        assert rel_err(net.unet(x, t), unet(x, t).sample) <= NET_TOL
    from gmkit.interop.pickles import converted_dir

    assert len(list(converted_dir().glob("*.safetensors"))) >= 1

    def no_unpickling(*a, **k):
        raise AssertionError("the converted safetensors file should have been used")

    monkeypatch.setattr(torch, "load", no_unpickling)
    load(str(folder), allow_pickle=True)  # second run: from the conversion cache


def test_pickle_that_weights_only_rejects_is_a_clear_error(ddpm_repo, tmp_path):
    path, _, _ = ddpm_repo
    folder = _pickle_only(path, tmp_path / "evil", extra=NotATensor())
    with pytest.raises(GmkitError, match="weights_only=True.*refused"):
        load(str(folder), allow_pickle=True)


# -- bad input ------------------------------------------------------------------------------------

def test_unsupported_pipeline_names_what_was_found(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "ScoreSdeVePipeline", "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "ScoreSdeVeScheduler"]}))
    with pytest.raises(GmkitError, match=r"ScoreSdeVePipeline is not supported.*unet \(UNet2DModel\).*ScoreSdeVeScheduler"):
        load(str(tmp_path))


def test_missing_file_and_mismatched_shapes(ddpm_repo, tmp_path):
    path, _, _ = ddpm_repo
    broken = tmp_path / "no-config"
    shutil.copytree(path, broken)
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(GmkitError, match="missing file unet/config.json"):
        load(str(broken))
    wrong = tmp_path / "wrong-shape"
    shutil.copytree(path, wrong)
    cfg = json.loads((wrong / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [8, 24]
    (wrong / "unet" / "config.json").write_text(json.dumps(cfg))
    r = run_cli("sample", str(wrong), "--steps", "2", "--out", str(tmp_path / "x.png"))
    assert r.code == 2 and "has shape" in r.err and len(r.err.strip().splitlines()) == 1
    cfg["resnet_time_scale_shift"] = "scale_shift"
    (wrong / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GmkitError, match="resnet_time_scale_shift='scale_shift' is not supported"):
        load(str(wrong))


# -- unconditional latent diffusion: VQModel + UNet2DModel -----------------------------------------

@pytest.fixture(scope="session")
def ldm_repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("diffusers") / "ldm"
    vq = _randomize(diffusers.VQModel(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                      latent_channels=3, num_vq_embeddings=16, norm_num_groups=4, sample_size=16), 1)
    unet = tiny_unet(flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, norm_eps=1e-5, attention_head_dim=8)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    diffusers.LDMPipeline(vqvae=vq, unet=unet, scheduler=scheduler).save_pretrained(path)
    return path, vq, unet, diffusers.DDIMScheduler.from_pretrained(path, subfolder="scheduler")


def test_vqmodel_decode_matches_diffusers(ldm_repo):
    path, vq, unet, _ = ldm_repo
    net, src = load(str(path))
    assert net.name == "vqldm" and net.image_shape == (3, 16, 16)
    h = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(net.vqvae.decode(h), vq.decode(h).sample) <= NET_TOL
        assert rel_err(net.vqvae.encode(x), vq.encode(x).latents) <= NET_TOL
        t = torch.tensor([5, 900])
        assert rel_err(net.unet(h, t), unet(h, t).sample) <= NET_TOL


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_ldm_pipeline_sampling_matches_diffusers(ldm_repo, sampler):
    path, vq, unet, scheduler = ldm_repo
    net, _ = load(str(path))
    ref = reference_run(diffusers.LDMPipeline, {"vqvae": vq, "unet": unet}, getattr(diffusers, SCHEDULERS[sampler]),
                        scheduler.config, sampler, eta=0.0)
    assert rel_err(as_np_images(net.sample(gens(), sampler=sampler, steps=STEPS)), ref) <= RUN_TOL


# -- push ------------------------------------------------------------------------------------------

def test_push_dry_run_writes_the_upload_folder_with_a_model_card(tiny_run, tmp_path):
    out = tmp_path / "upload"
    r = run_cli("push", str(tiny_run), "myname/gmkit-mnist-ddpm", "--dry-run", "--out", str(out), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["uploaded"] is False and report["folder"] == str(out)
    assert sorted(report["files"]) == ["README.md", "config.json", "model.safetensors", "samples.png"]
    from safetensors.torch import load_file

    pushed, ours = load_file(out / "model.safetensors"), load_file(tiny_run / "model.safetensors")
    assert pushed.keys() == ours.keys() and all(torch.equal(pushed[k], ours[k]) for k in ours)
    card = (out / "README.md").read_text()
    assert "library_name: gmkit" in card and "**ddpm**" in card and "**digits**" in card
    assert "gmkit sample myname/gmkit-mnist-ddpm" in card and "gmkit train ddpm --data digits" in card
    from PIL import Image

    assert Image.open(out / "samples.png").size[0] > 0
    # The pushed folder is itself a loadable model source.
    net, _ = load(str(out))
    assert net.name == "ddpm"
    # Without --out a dry run says where it wrote; bad input is one line.
    r = run_cli("push", str(tiny_run), "myname/x", "--dry-run")
    assert r.code == 0 and str(tiny_run / "hub-upload") in r.out  # a result: stdout
    assert run_cli("push", str(tiny_run), "myname/x", "--dry-run").code == 0  # the default folder is rewritten
    shutil.rmtree(tiny_run / "hub-upload")
    r = run_cli("push", str(tiny_run), "not a repo id", "--dry-run", "--out", str(tmp_path / "u2"))
    assert r.code == 2 and "repo id" in r.err
    r = run_cli("push", str(tmp_path / "nothing"), "myname/x", "--dry-run")
    assert r.code == 2 and "no such run folder" in r.err
    r = run_cli("push", str(tiny_run), "myname/x", "--out", str(tmp_path / "u3"))  # conftest sets HF_HUB_OFFLINE=1
    assert r.code == 2 and "HF_HUB_OFFLINE" in r.err


def test_push_never_publishes_local_paths_nor_deletes_a_foreign_folder(tiny_run, tmp_path, monkeypatch):
    import tempfile

    from gmkit.checkpoint import read_metadata

    local = str(tiny_run.parent)  # an absolute path the recipe holds (--out, run_folder)
    assert local in read_metadata(tiny_run / "model.safetensors")["gmkit.recipe"]
    out = tmp_path / "up"
    assert run_cli("push", str(tiny_run), "me/x", "--dry-run", "--out", str(out)).code == 0
    assert local not in read_metadata(out / "model.safetensors")["gmkit.recipe"]
    assert local not in (out / "README.md").read_text() and ".../tiny" in (out / "README.md").read_text()
    kept = tmp_path / "kept"
    assert run_cli("push", str(tiny_run), "me/x", "--dry-run", "--out", str(kept), "--keep-local-paths").code == 0
    assert local in read_metadata(kept / "model.safetensors")["gmkit.recipe"] and local in (kept / "README.md").read_text()
    # A hub-upload/ folder beside a checkpoint that gmkit did not write is refused, never deleted.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copyfile(tiny_run / "model.safetensors", ckpt / "m.safetensors")
    (ckpt / "hub-upload").mkdir()
    (ckpt / "hub-upload" / "my-notes.txt").write_text("mine")
    r = run_cli("push", str(ckpt / "m.safetensors"), "me/x", "--dry-run")
    assert r.code == 2 and "did not write" in r.err and (ckpt / "hub-upload" / "my-notes.txt").read_text() == "mine"
    shutil.rmtree(ckpt / "hub-upload")
    assert run_cli("push", str(ckpt / "m.safetensors"), "me/x", "--dry-run").code == 0
    assert run_cli("push", str(ckpt / "m.safetensors"), "me/x", "--dry-run").code == 0  # its own: written afresh
    # A failed push removes its temporary copy of the model.
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    r = run_cli("push", str(tiny_run), "me/x")  # conftest sets HF_HUB_OFFLINE=1: the upload fails
    assert r.code == 2 and "HF_HUB_OFFLINE" in r.err and not list(temp.iterdir())


# -- Stable Diffusion: AutoencoderKL + UNet2DConditionModel + CLIP ----------------------------------

PROMPTS = ["a futuristic cityscape at sunset", "a red apple"]


def tiny_cond_unet(**kw):
    args = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2)
    args.update(kw)
    return _randomize(diffusers.UNet2DConditionModel(**args), 3)


@pytest.fixture(scope="session")
def sd_repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("diffusers")
    pipe = tiny_sd_pipeline(base)
    pipe.save_pretrained(base / "sd")
    return base / "sd", pipe


def test_stable_diffusion_networks_match_diffusers(sd_repo):
    path, pipe = sd_repo
    net, src = load(str(path))
    assert net.name == "ldm" and src.defaults == {"sampler": "dpm++2m", "steps": 25, "guidance": 7.5}
    assert net.image_shape == (3, 16, 16) and net.config.latent_scale == pipe.vae.config.scaling_factor
    g = torch.Generator().manual_seed(7)
    z, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 901]), torch.randn(2, 77, 16, generator=g)
    with torch.no_grad():
        assert rel_err(net.unet(z, t, context=ctx), pipe.unet(z, t, encoder_hidden_states=ctx).sample) <= NET_TOL
        assert rel_err(net.autoencoder.vae.decode(z), pipe.vae.decode(z).sample) <= NET_TOL
        ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert rel_err(net.text.encode(PROMPTS)[0], pipe.text_encoder(ids)[0]) <= NET_TOL


def test_stable_diffusion_2_options_match_diffusers(tmp_path):
    """SD 2.x: linear projections in the transformer blocks, heads of constant width (64 there)."""
    unet = tiny_cond_unet(use_linear_projection=True, attention_head_dim=(2, 4),
                          down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                          up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    cfg = configs.unet2d_condition_config(dict(unet.config), "sd2")
    assert cfg.use_linear_projection and cfg.num_heads == 0 and cfg.head_dim == 4
    from gmkit.nn.unet import UNet

    ours = UNet(cfg).eval()
    ours.load_state_dict(interop.renamed(unet.state_dict(), ""))
    g = torch.Generator().manual_seed(8)
    z, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 600]), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        assert rel_err(ours(z, t, context=ctx), unet(z, t, encoder_hidden_states=ctx).sample) <= NET_TOL


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_stable_diffusion_sampling_matches_diffusers(sd_repo, sampler):
    path, pipe = sd_repo
    net, _ = load(str(path))
    saved = diffusers.PNDMScheduler.from_pretrained(path, subfolder="scheduler")  # as users load it
    ref_pipe = diffusers.StableDiffusionPipeline(**{**pipe.components, "scheduler": getattr(
        diffusers, SCHEDULERS[sampler]).from_config(saved.config)})
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, generator=gens(), output_type="np").images
    ours = net.sample(gens(), prompt=PROMPTS, guidance=7.5, sampler=sampler, steps=STEPS)
    assert rel_err(as_np_images(ours), ref) <= RUN_TOL


def test_cli_stable_diffusion_with_a_prompt_by_path_and_repo_id(sd_repo, tmp_path, monkeypatch):
    path, _ = sd_repo
    r = run_cli("sample", str(path), "--prompt", "a futuristic cityscape at sunset", "--steps", "4", "--sampler", "dpm++2m",
                "--guidance", "7.5", "--out", str(tmp_path / "city.png"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["n"] == 1 and (tmp_path / "city.png").stat().st_size > 0
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hf_cache_repo(path, tmp_path / "hf", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    r = run_cli("sample", "stable-diffusion-v1-5/stable-diffusion-v1-5", "--prompt", "a red apple", "--steps", "3",
                "--out", str(tmp_path / "apple.png"), "--quiet")
    assert r.code == 0, r.err


def test_a_config_without_timestep_spacing_takes_each_schedulers_default(ddpm_repo, tmp_path):
    """Older repos leave timestep_spacing out: DDPM/DDIM then space 'leading', DPM-Solver++ 'linspace',
    exactly as diffusers users get when they swap schedulers with from_config."""
    path, unet, _ = ddpm_repo
    old = tmp_path / "old"
    shutil.copytree(path, old)
    cfg_file = old / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["timestep_spacing"]
    cfg_file.write_text(json.dumps(cfg))
    scheduler = diffusers.DDPMScheduler.from_pretrained(old, subfolder="scheduler")
    net, _ = load(str(old))
    assert (net.config.timestep_spacing, net.config.solver_spacing) == ("leading", "linspace")
    for sampler in ("ddim", "dpm++2m"):
        pipe_cls = diffusers.DDIMPipeline if sampler == "ddim" else diffusers.DDPMPipeline
        kw = {"eta": 0.0} if sampler == "ddim" else {}
        ref = reference_run(pipe_cls, {"unet": unet}, getattr(diffusers, SCHEDULERS[sampler]), scheduler.config, sampler, **kw)
        assert rel_err(as_np_images(net.sample(gens(), sampler=sampler, steps=STEPS)), ref) <= RUN_TOL
