"""The Python API: gmkit.load / Model.sample / encode / decode / edit / gmkit.train, as the README shows it."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
import torch

import gmkit
from conftest import run_cli
from gmkit.errors import OptionError


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_import_gmkit_is_light():
    r = subprocess.run([sys.executable, "-c", "import sys, gmkit; assert 'torch' not in sys.modules; print(gmkit.load)"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_api_images_are_the_cli_png_bytes(tiny_run, tmp_path, sampler):
    folder = tmp_path / "cli"
    r = run_cli("sample", str(tiny_run), "-n", "3", "--seed", "5", "--steps", "4", "--sampler", sampler,
                "--out", f"{folder}/", "--quiet")
    assert r.code == 0, r.err
    model = gmkit.load(str(tiny_run), device="cpu")
    images = model.sample(3, seed=5, steps=4, sampler=sampler, batch_size=2)  # another batch size: same images
    assert len(images) == 3
    for i, im in enumerate(images):
        assert _png(im) == (folder / f"{i:04d}.png").read_bytes(), i
    one = model.sample(1, seed=7, steps=4, sampler=sampler)[0]  # image 2 of the run, alone
    assert _png(one) == (folder / "0002.png").read_bytes()
    x = model.sample_tensor(2, seed=5, steps=4, sampler=sampler)
    assert x.shape == (2, 1, 8, 8) and float(x.abs().max()) <= 1


def test_the_name_carries_its_defaults(tmp_path):
    ddim = gmkit.load("ddim", device="cpu")
    assert ddim.defaults == {"sampler": "ddim", "steps": 50}
    opts = ddim.options()
    assert (opts.sampler, opts.steps) == ("ddim", 50) and ddim.net.sampling_plan(opts.sampler, opts.steps).network_calls == 50
    plain = ddim.sample_tensor(1, seed=0)
    assert torch.equal(plain, ddim.sample_tensor(1, seed=0, sampler="ddim", steps=50))
    r = run_cli("sample", "ddim", "-n", "1", "--seed", "0", "--out", str(tmp_path / "one.png"), "--quiet")
    assert r.code == 0, r.err
    assert _png(ddim.sample(1, seed=0)[0]) == (tmp_path / "one.png").read_bytes()
    ddpm = gmkit.load("ddpm", device="cpu")
    assert (ddpm.options().sampler, ddpm.net.sampling_plan(ddpm.options().sampler).steps) == ("ddpm", 1000)


def test_api_errors_name_settings_not_flags(tiny_run):
    model = gmkit.load(str(tiny_run), device="cpu")
    with pytest.raises(OptionError) as e:
        model.sample(2, steps=0)
    assert e.value.setting == "steps" and str(e.value) == "steps must be >= 1, got 0"
    with pytest.raises(OptionError) as e:
        model.sample(2, prompt="a red apple")
    assert e.value.setting == "prompt" and "ddpm models do not take prompt" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(OptionError, match="seed"):
        model.sample(1, seed=-1)
    with pytest.raises(OptionError, match="eta"):
        model.sample(1, eta=float("nan"))


def test_encode_decode_and_edit(tiny_run):
    vae = gmkit.load("vae", device="cpu")
    images = vae.sample(4, seed=0)
    z = vae.encode(images)
    assert z["mean"].shape == (4, 16)
    back = vae.decode(z)
    assert len(back) == 4 and back[0].size == images[0].size
    model = gmkit.load(str(tiny_run), device="cpu")
    start = model.sample(1, seed=0, steps=4)[0]
    edited = model.edit(start, strength=0.5, steps=4, seed=1)
    assert len(edited) == 1 and edited[0].size == start.size
    assert model.edit(start, strength=0.0, steps=4)[0].tobytes() == start.tobytes()  # strength 0: the image itself


def test_prompts_for_text_to_image():
    ldm = gmkit.load("ldm", device="cpu")
    images = ldm.sample(prompt=["a red apple", "a rocket"], steps=2, seed=0)
    assert len(images) == 2 and images[0].size == (32, 32) and images[0].mode == "RGB"
    assert len(ldm.sample(prompt="a red apple", steps=2)) == 1


def test_scripted_training(tmp_path):
    out = tmp_path / "run dir"  # a space in the path
    tiny = {"unet.block_out_channels": [8, 16], "unet.layers_per_block": 1, "unet.attention_blocks": [1],
            "unet.norm_groups": 4, "num_train_timesteps": 100, "train.preview": 0, "train.log_every": 1}
    summary = gmkit.train("ddpm", data="digits", out=out, steps=2, batch_size=8, overrides=tiny, quiet=True)
    assert summary["step"] == 2 and (out / "model.safetensors").is_file()
    from gmkit.checkpoint import read_metadata

    recipe = json.loads(read_metadata(out / "model.safetensors")["gmkit.recipe"])
    assert recipe["run_folder"] == str(out.resolve()) and recipe["command"].startswith("gmkit.train('ddpm'")
    assert gmkit.load(str(out), device="cpu").sample(1, steps=2)[0].size == (8, 8)


def test_model_card_snippet_uses_the_api(tiny_run, tmp_path):
    from gmkit.checkpoint import read_metadata
    from gmkit.publish import model_card

    card = model_card("someone/tiny", read_metadata(tiny_run / "model.safetensors"), has_grid=True)
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "gmkit.load(" in code and "registry" not in code
    code = code.replace('"someone/tiny"', repr(str(tiny_run))).replace('"sample0.png"', repr(str(tmp_path / "s.png")))
    exec(compile(code, "model card", "exec"), {})
    assert (tmp_path / "s.png").is_file()
