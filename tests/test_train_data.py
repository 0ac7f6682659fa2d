"""Training on the data layer: exact resume from a stream, presets, gradient accumulation, trackers."""

import importlib.util

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import TINY, run_cli
from test_data_sources import _tar_shards


def _run(data, out, steps, *extra):
    r = run_cli("train", "ddpm", "--data", str(data), "--steps", str(steps), "--batch-size", "4", "--out", str(out),
                "--quiet", "--checkpoint-every", "100", *TINY, *extra)
    return r


def _same_state(a, b):
    sa, sb = load_file(a / "train_state.safetensors"), load_file(b / "train_state.safetensors")
    keys = [k for k in sa if k.startswith(("model.", "ema.", "optim."))]
    return keys and all(torch.equal(sa[k], sb[k]) for k in keys)


def test_resume_from_a_stream_equals_an_uninterrupted_run(tmp_path):
    shards = _tar_shards(tmp_path, shards=3, per=4)
    (shards / "part-001.tar").rename(shards / "part-001.tar.keep")
    import io
    import tarfile

    with tarfile.open(shards / "part-001.tar.keep") as src, tarfile.open(shards / "part-001.tar", "w") as dst:
        for m in src.getmembers():  # the same shard with one unreadable image: positions count it
            data = src.extractfile(m).read()
            if m.name == "001002.png":
                data = data[:40]
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    (shards / "part-001.tar.keep").unlink()
    flags = ("--stream", "--workers", "2", "--random-flip")
    assert _run(shards, tmp_path / "straight", 5, *flags).code == 0  # both substreams pass an epoch's end
    assert _run(shards, tmp_path / "split", 2, *flags).code == 0
    r = _run(shards, tmp_path / "split", 5, "--resume", str(tmp_path / "split"), "--workers", "2")
    assert r.code == 0, r.err
    assert _same_state(tmp_path / "straight", tmp_path / "split")
    r = _run(shards, tmp_path / "split", 7, "--resume", str(tmp_path / "split"), "--workers", "1")
    assert r.code == 2 and "resume with the same (workers 2)" in r.err and "Traceback" not in r.err


def test_gradient_accumulation_matches_one_big_batch():
    from gmkit.families.base import Family

    class Line(Family):
        name = "line"

        def __init__(self):
            super().__init__(None)
            self.w = nn.Linear(3, 1)

        def forward(self, batch):
            return {"loss": (self.w(batch["x"]) - batch["y"]).pow(2).mean()}

    torch.manual_seed(0)
    batch = {"x": torch.randn(8, 3), "y": torch.randn(8, 1)}
    one, acc = Line(), Line()
    acc.load_state_dict(one.state_dict())
    s1 = one.train_step(one, batch, one.optimizers(0.1, 0.0), 0, 0.0)
    s2 = acc.train_step(acc, batch, acc.optimizers(0.1, 0.0), 0, 0.0, accum=4)
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-6) and s1["grad_norm"] == pytest.approx(s2["grad_norm"], rel=1e-5)
    assert torch.allclose(one.w.weight, acc.w.weight, atol=1e-6) and not torch.equal(one.w.weight, Line().w.weight)


def test_grad_accum_flag_and_families_that_refuse_it(tmp_path):
    r = run_cli("train", "ddpm", "--data", "digits", "--steps", "2", "--batch-size", "8", "--grad-accum", "2",
                "--out", str(tmp_path / "acc"), "--quiet", *TINY)
    assert r.code == 0, r.err
    r = run_cli("train", "gan", "--data", "digits", "--steps", "1", "--grad-accum", "2", "--out", str(tmp_path / "g"))
    assert r.code == 2 and "cannot accumulate gradients" in r.err


def test_presets_cifar10_is_the_ddpm_paper_unet_and_image_size_picks_one(tmp_path):
    from gmkit.families import get_family
    from gmkit.nn.unet import UNet
    from gmkit.presets import apply_preset, auto_preset

    ddpm = get_family("ddpm")
    cfg, train, size = apply_preset("cifar10", ddpm, ddpm.Config(), None)
    unet = UNet(cfg.unet.__class__(**{**cfg.unet.__dict__, "in_channels": 3, "out_channels": 3, "sample_size": 32}))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 35.7  # Ho et al. 2020: 35.7M
    assert size == 32 and train["lr"] == 2e-4 and auto_preset(64, "cpu") == "64-cpu" and auto_preset(48, "cuda") is None
    r = run_cli("train", "ddpm", "--data", "digits", "--image-size", "32", "--steps", "1", "--batch-size", "2",
                "--out", str(tmp_path / "p"), "--set", "train.preview=0")
    assert r.code == 0, r.err
    assert "preset 32-cpu" in r.err
    r = run_cli("train", "ddpm", "--data", "digits", "--preset", "64", "--image-size", "32", "--steps", "1")
    assert r.code == 2 and "--preset 64 is for 64 px images, not 32 (--image-size)" in r.err
    r = run_cli("train", "gan", "--data", "digits", "--preset", "cifar10", "--steps", "1")
    assert r.code == 2 and "presets shape pixel-space UNets" in r.err and "Traceback" not in r.err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_logs_scalars_and_sample_grids(tmp_path):
    out = tmp_path / "tb"
    r = _run("digits", out, 2, "--log-with", "tensorboard")
    assert r.code == 0, r.err
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(out / "tensorboard"))
    ev.Reload()
    assert "train/loss" in ev.Tags()["scalars"] and ev.Tags()["images"] == ["samples"]
    assert [s.step for s in ev.Scalars("train/loss")] == [1, 2]


def test_missing_tracker_package_is_one_line(tmp_path):
    r = _run("digits", tmp_path / "x", 1, "--log-with", "nonsense")
    assert r.code == 2 and "--log-with must be one of tensorboard, wandb, trackio" in r.err
    if importlib.util.find_spec("trackio") is None:
        r = _run("digits", tmp_path / "y", 1, "--log-with", "trackio")
        assert r.code == 2 and "pip install trackio" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("package", ["wandb", "trackio"])
def test_wandb_like_trackers_get_scalars_images_and_finish(tmp_path, monkeypatch, package):
    """wandb and trackio share one module-level API; a stand-in module records what gmkit calls."""
    import sys
    import types

    calls = []
    fake = types.ModuleType(package)
    fake.init = lambda **kw: calls.append(("init", kw))
    fake.log = lambda data, step=None: calls.append(("log", step, data))
    fake.Image = lambda path: ("image", path)
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, package, fake)
    monkeypatch.setenv("WANDB_MODE", "unset")  # recorded, so the value gmkit sets is undone afterwards
    monkeypatch.delenv("WANDB_MODE")
    out = tmp_path / package
    r = _run("digits", out, 2, "--log-with", package)
    assert r.code == 0, r.err
    assert calls[0][0] == "init" and calls[0][1]["project"] == "gmkit" and calls[0][1]["name"] == package
    assert "train" in calls[0][1]["config"]
    scalars = [c for c in calls if c[0] == "log" and any(k.endswith("loss") for k in c[2])]
    assert [c[1] for c in scalars] == [1, 2]
    images = [c for c in calls if c[0] == "log" and "samples" in c[2]]
    assert images and images[0][2]["samples"][0] == "image"
    assert calls[-1] == ("finish",)
    if package == "wandb":
        import os

        assert os.environ.get("WANDB_MODE") == "offline"  # never needs the network
