"""Text-to-image latent diffusion: captioned data, the cross-attention UNet, guidance, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli

TINY_LDM = ["--set", "unet.block_out_channels=[32,32]", "--set", "autoencoder.vae.block_out_channels=[8,16,16]",
            "--set", "num_train_timesteps=100", "--set", "train.preview=2", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory) -> Path:
    """A tiny LDM (and its first-stage autoencoder) trained a few steps on captioned MNIST."""
    out = tmp_path_factory.mktemp("runs") / "ldm"
    r = run_cli("train", "ldm", "--data", "mnist-captions", "--ae-steps", "4", "--steps", "4", "--batch-size", "8",
                "--out", str(out), "--quiet", *TINY_LDM)
    assert r.code == 0, r.err
    return out


def _folder(tmp_path: Path, n: int = 6, metadata: bool = True, skip_caption: bool = False) -> Path:
    from PIL import Image

    root = tmp_path / "pics"
    root.mkdir()
    lines = []
    for i in range(n):
        Image.new("RGB", (16, 16), ((40 * i) % 256, 100, 200)).save(root / f"{i}.png")
        if not (skip_caption and i == n - 1):
            lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a square of colour {i}"}))
    if metadata:
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


# -- data ---------------------------------------------------------------------------------------

def test_openmoji_is_rendered_with_captions():
    from gmkit.data import load_data

    train, test, everything = load_data("openmoji"), load_data("openmoji", "test"), load_data("openmoji:all")
    assert len(train) + len(test) == len(everything) > 1500
    assert everything.images().shape[1:] == (3, 32, 32)
    assert -1 <= float(everything.images().min()) < 0 < float(everything.images().max()) <= 1
    names = [c[0] for c in everything.captions]
    assert "cityscape at dusk" in names and "red apple" in names
    apple = everything.captions[names.index("red apple")]
    assert "an emoji of a red apple" in apple
    # A rendered emoji is not a blank square.
    assert float(everything.images()[names.index("red apple")].std()) > 0.2


def test_folder_captions_from_metadata(tmp_path):
    from gmkit.data import load_data

    data = load_data(str(_folder(tmp_path)))
    assert data.captions[2] == ["a square of colour 2"]


def test_train_ldm_on_a_captioned_folder(tmp_path):
    out = tmp_path / "mine"
    r = run_cli("train", "ldm", "--data", str(_folder(tmp_path)), "--ae-steps", "2", "--steps", "2", "--batch-size", "4",
                "--out", str(out), "--quiet", *TINY_LDM)
    assert r.code == 0, r.err
    r = run_cli("sample", str(out), "--prompt", "a square of colour 3", "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert r.code == 0, r.err


def test_missing_metadata_or_caption_is_a_clear_error(tmp_path):
    r = run_cli("train", "ldm", "--data", str(_folder(tmp_path, metadata=False)), "--steps", "1", "--out", str(tmp_path / "r"))
    assert r.code != 0 and "captioned data" in r.err and "Traceback" not in r.err
    other = tmp_path / "b"
    other.mkdir()
    r = run_cli("train", "ldm", "--data", str(_folder(other, skip_caption=True)), "--steps", "1", "--out", str(tmp_path / "r2"))
    assert r.code != 0 and "5.png: no caption" in r.err


# -- building blocks ------------------------------------------------------------------------------

def test_cross_attention_ignores_padding_tokens():
    from gmkit.nn.transformer import Transformer2D

    torch.manual_seed(0)
    block = Transformer2D(32, 16, 12, groups=8).eval()
    x, ctx = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 12)
    padded = torch.cat([ctx, torch.randn(2, 5, 12) * 100], dim=1)
    mask = torch.tensor([[1, 1, 1] + [0] * 5] * 2, dtype=torch.bool)
    with torch.no_grad():
        a = block(x, ctx, torch.ones(2, 3, dtype=torch.bool))
        b = block(x, padded, mask)
        c = block(x, padded, torch.ones(2, 8, dtype=torch.bool))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3  # the mask matters


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional(tiny_ldm):
    from gmkit.registry import load

    net, _ = load(str(tiny_ldm))
    x, t = torch.randn(2, *net.sample_shape), torch.full((2,), 50.0)
    cond = net.network(2, guidance=1.0, prompt="a handwritten digit seven")(x, t)
    uncond = net.network(2, guidance=1.0, prompt="")(x, t)
    g0 = net.network(2, guidance=0.0, prompt="a handwritten digit seven")(x, t)
    g3 = net.network(2, guidance=3.0, prompt="a handwritten digit seven")(x, t)
    torch.testing.assert_close(g0, uncond, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g3, uncond + 3 * (cond - uncond), atol=1e-5, rtol=1e-4)
    neg = net.network(2, guidance=1.0, prompt="", negative_prompt="x")(x, t)
    torch.testing.assert_close(neg, uncond)  # guidance 1 never reads the negative branch


# -- training and the CLI --------------------------------------------------------------------------

def test_train_ldm_writes_both_stages_and_resumes(tiny_ldm, tmp_path):
    from gmkit.checkpoint import read_metadata

    assert (tiny_ldm / "autoencoder" / "model.safetensors").is_file()
    meta = read_metadata(tiny_ldm / "model.safetensors")
    cfg = json.loads(meta["gmkit.config"])
    assert cfg["latent_scale"] > 0 and cfg["unet"]["cross_attention_dim"] == 384
    assert json.loads(meta["gmkit.recipe"])["autoencoder"].endswith("autoencoder")
    r = run_cli("train", "ldm", "--resume", str(tiny_ldm), "--steps", "5", "--quiet")
    assert r.code == 0, r.err


def test_train_ldm_with_a_given_autoencoder(tiny_ldm, tmp_path):
    out = tmp_path / "second"
    r = run_cli("train", "ldm", "--data", "mnist-captions", "--autoencoder", str(tiny_ldm / "autoencoder"), "--steps", "2",
                "--batch-size", "4", "--out", str(out), "--quiet", *TINY_LDM)
    assert r.code == 0, r.err
    assert not (out / "autoencoder").exists()
    r = run_cli("train", "ldm", "--data", "mnist-captions", "--autoencoder", "vae", "--steps", "1", "--out", str(tmp_path / "x"))
    assert r.code != 0 and "not an autoencoder" in r.err


def test_sample_with_prompts(tiny_ldm, tmp_path):
    one = tmp_path / "one.png"
    r = run_cli("sample", str(tiny_ldm), "--prompt", "a handwritten digit seven", "--steps", "3", "--out", str(one), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["n"] == 1 and report["family"] == "ldm"
    again = tmp_path / "again.png"
    run_cli("sample", str(tiny_ldm), "--prompt", "a handwritten digit seven", "--steps", "3", "--out", str(again))
    assert one.read_bytes() == again.read_bytes()  # same seed, same prompt, same image
    other = tmp_path / "other.png"
    run_cli("sample", str(tiny_ldm), "--prompt", "a handwritten digit seven", "--negative-prompt", "zero",
            "--guidance", "4", "--steps", "3", "--out", str(other))
    assert other.read_bytes() != one.read_bytes()

    outs = tmp_path / "outs"
    r = run_cli("sample", str(tiny_ldm), "--prompt", "-", "--steps", "2", "--out", f"{outs}/",
                stdin=b"a handwritten digit one\n\nthe number 2\n")
    assert r.code == 0, r.err
    assert len(list(outs.glob("*.png"))) == 2  # one image per non-empty line


def test_prompt_messages_and_errors(tiny_ldm, tmp_path, tiny_run):
    r = run_cli("sample", str(tiny_ldm), "--prompt", "", "--steps", "2", "--out", str(tmp_path / "u.png"))
    assert r.code == 0 and "unconditional" in r.err
    r = run_cli("sample", str(tiny_ldm), "--prompt", "digit " * 80, "--steps", "2", "--out", str(tmp_path / "l.png"))
    assert r.code == 0 and "truncated" in r.err
    r = run_cli("sample", str(tiny_run), "--prompt", "a cat", "--out", str(tmp_path / "c.png"))
    assert r.code != 0 and "do not take --prompt" in r.err and "Traceback" not in r.err
    r = run_cli("sample", str(tiny_ldm), "--class", "3", "--out", str(tmp_path / "c.png"))
    assert r.code != 0 and "--class" in r.err


def test_encode_decode_ldm(tiny_ldm, tmp_path):
    pics = tmp_path / "pics"
    assert run_cli("sample", str(tiny_ldm), "-n", "3", "--steps", "2", "--out", f"{pics}/").code == 0
    lat = tmp_path / "lat.safetensors"
    r = run_cli("encode", str(tiny_ldm), str(pics), "--out", str(lat))
    assert r.code == 0, r.err
    from safetensors.torch import load_file

    z = load_file(lat)["latents"]
    assert tuple(z.shape) == (3, 4, 7, 7)
    r = run_cli("decode", str(tiny_ldm), str(lat), "--out", str(tmp_path / "back.png"))
    assert r.code == 0, r.err


def test_bench_reports_latent_vs_pixel_cost(tiny_ldm):
    r = run_cli("bench", "--models", str(tiny_ldm), "--steps", "3", "--runs", "1", "--batch-size", "2", "--json")
    assert r.code == 0, r.err
    lp = json.loads(r.out)["latent_vs_pixel"][0]
    assert lp["latent"] == [4, 7, 7] and lp["resolution"] == [1, 28, 28]
    assert lp["pixel_gflops_per_image"] > lp["ldm_gflops_per_image"]
    assert lp["speedup"] > 0  # measured time: reported, never asserted on (that belongs to benchmarks)


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m", "heun", "euler-ancestral"])
def test_every_diffusion_sampler_runs_in_latent_space(tiny_ldm, tmp_path, sampler):
    r = run_cli("sample", str(tiny_ldm), "--prompt", "the number 4", "--sampler", sampler, "--steps", "3",
                "--out", str(tmp_path / "x.safetensors"))
    assert r.code == 0, r.err
    from safetensors.torch import load_file

    x = next(iter(load_file(tmp_path / "x.safetensors").values()))
    assert x.shape == (1, 1, 28, 28) and bool(torch.isfinite(x).all())
