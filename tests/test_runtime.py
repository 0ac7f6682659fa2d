"""The runtime policies (threads, bf16 autocast, compilation) and the fast paths they switch on."""

import copy
import os

import pytest
import torch

from conftest import TINY, run_cli
from gmkit import runtime
from gmkit.errors import OptionError
from gmkit.families.ddpm import DDPM, DDPMConfig
from gmkit.nn.unet import UNet, UNetConfig


def tiny_unet(**kw) -> UNet:
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=1, out_channels=1, sample_size=8, block_out_channels=[8, 16], attention_blocks=[1],
                     norm_groups=4, **kw)
    return UNet(cfg).eval()


# -- threads ----------------------------------------------------------------------------------------

def test_default_threads_leaves_busy_cores_alone():
    assert runtime.default_threads(cores=2, load=0.2) == 2
    assert runtime.default_threads(cores=2, load=1.0) == 1
    assert runtime.default_threads(cores=2, load=9.5) == 1  # never zero
    assert runtime.default_threads(cores=16, load=3.4) == 13


@pytest.fixture
def restore_threads(monkeypatch):
    old = torch.get_num_threads()
    monkeypatch.delenv("GMKIT_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    yield monkeypatch
    torch.set_num_threads(old)


def test_threads_explicit_then_env_then_omp(restore_threads):
    mp = restore_threads
    assert runtime.configure_threads(2) == 2 and torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    mp.setenv("GMKIT_THREADS", "1")
    assert runtime.configure_threads() == 1 and torch.get_num_threads() == 1
    mp.delenv("GMKIT_THREADS")
    mp.setenv("OMP_NUM_THREADS", "2")
    assert runtime.configure_threads() == 2  # the user's own OpenMP setting is respected
    mp.delenv("OMP_NUM_THREADS")
    mp.setattr(runtime, "default_threads", lambda: 1)
    assert runtime.configure_threads() == 1


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_thread_counts_are_one_line_errors(restore_threads, value):
    restore_threads.setenv("GMKIT_THREADS", value)
    with pytest.raises(OptionError, match="threads"):
        runtime.configure_threads()
    restore_threads.delenv("GMKIT_THREADS")
    r = run_cli("--threads", "0", "models")
    assert r.code == 2 and "threads must be a positive integer" in r.err and "Traceback" not in r.err


# -- precision --------------------------------------------------------------------------------------

def test_precision_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(OptionError, match="precision"):
        runtime.resolve_precision("fp8", "cpu")


def test_bf16_autocast_is_close_to_fp32_but_not_equal():
    net = tiny_unet()
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 800])
    with torch.no_grad():
        ref = net(x, t)
        with runtime.autocast("cpu", "bf16"):
            low = net(x, t)
        with runtime.autocast("cpu", "fp32"):
            same = net(x, t)
    assert low.dtype == torch.bfloat16 and torch.equal(same, ref)
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05


# -- compilation ------------------------------------------------------------------------------------

def test_compile_options_per_device():
    # CUDA graphs for GPU inference, weight freezing for CPU inference, defaults for training.
    assert runtime.compile_options(torch.device("cuda"), training=False) == {"mode": "reduce-overhead"}
    assert runtime.compile_options("cpu", training=False) == {"options": {"freezing": True}}
    assert runtime.compile_options(torch.device("cuda"), training=True) == {}
    assert runtime.compile_options("cpu", training=True) == {}


def test_compile_networks_picks_sampling_networks_or_trainable_children(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    model = DDPM(DDPMConfig(unet=tiny_unet().cfg))
    assert runtime.compile_networks(model, "cpu", training=False) == [model.unet]
    assert calls == [("UNet", {"options": {"freezing": True}})]
    calls.clear()
    assert runtime.compile_networks(model, torch.device("cuda"), training=True) == [model.unet]
    assert calls == [("UNet", {})]
    model.unet.requires_grad_(False)  # frozen networks are not trained, so not compiled for training
    assert runtime.compile_networks(model, "cpu", training=True) == []


def test_compiled_unet_traces_whole_and_matches_eager(monkeypatch):
    # Dynamo traces the whole UNet as one graph (no graph breaks: fullgraph), without Inductor's
    # minutes of code generation on a CPU.
    torch.manual_seed(0)
    net = UNet(UNetConfig(sample_size=8, block_out_channels=[8], attention_blocks=[0], norm_groups=4, num_classes=3))
    ref = copy.deepcopy(net)
    keys = list(net.state_dict())
    monkeypatch.setattr(runtime, "compile_options", lambda device, training: {"backend": "eager", "fullgraph": True})
    runtime.compile_module(net, "cpu", training=True)
    assert list(net.state_dict()) == keys  # checkpoints keep their names
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 50, 999]), torch.tensor([0, 2, 3])
    out, expect = net(x, t, y), ref(x, t, y)
    assert torch.allclose(out, expect, atol=1e-5)
    out.square().mean().backward()
    expect.square().mean().backward()
    g, e = dict(net.named_parameters()), dict(ref.named_parameters())
    assert all(torch.allclose(g[k].grad, e[k].grad, atol=1e-5) for k in g)
    eager = runtime.uncompiled(copy.deepcopy(net))
    assert eager._compiled_call_impl is None and torch.allclose(eager(x, t, y), expect, atol=1e-5)


def test_train_compile_and_cpu_amp_reach_the_loop(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(runtime, "compile_networks", lambda model, device, training=False: seen.setdefault("compiled", training))
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.setdefault("autocast", []).append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    r = run_cli("train", "ddpm", "--data", "digits", "--steps", "2", "--batch-size", "8", "--out", str(tmp_path / "run"),
                "--quiet", "--compile", "--set", "train.cpu_amp=true", *TINY, "--set", "train.preview=0")
    assert r.code == 0, r.err
    assert seen["compiled"] is True
    assert ("cpu", torch.bfloat16, True) in seen["autocast"]
