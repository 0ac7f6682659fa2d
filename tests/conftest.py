"""Shared fixtures: an isolated cache, an in-process CLI runner, and a tiny trained checkpoint."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

# A tiny UNet so training a few steps takes a second on a laptop CPU.
TINY = ["--set", "unet.block_out_channels=[8,16]", "--set", "unet.layers_per_block=1",
        "--set", "unet.attention_blocks=[1]", "--set", "unet.norm_groups=4", "--set", "num_train_timesteps=100",
        "--set", "train.preview=4", "--set", "train.log_every=1"]


@dataclass
class Result:
    code: int
    out: str
    err: str
    raw: bytes = b""


class _Buffer(io.StringIO):
    """A text stream with a ``buffer`` attribute, as commands write bytes to stdout."""

    def __init__(self):
        super().__init__()
        self.buffer = io.BytesIO()


def run_cli(*args: str, stdin: bytes | None = None) -> Result:
    """Run ``gmkit ARGS`` in-process, as the console script does, and capture everything."""
    from gmkit.cli import main

    out, err = _Buffer(), _Buffer()
    old_argv, old_stdin = sys.argv, sys.stdin
    sys.argv = ["gmkit", *args]
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.stdin = old_argv, old_stdin
    return Result(code, out.getvalue(), err.getvalue(), out.buffer.getvalue())


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "gmkit-cache"
    monkeypatch.setenv("GMKIT_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder: tiny DDPM trained 6 steps on the 8x8 digits."""
    import os

    os.environ.setdefault("GMKIT_CACHE", str(tmp_path_factory.getbasetemp() / "gmkit-cache"))
    out = tmp_path_factory.mktemp("runs") / "tiny"
    r = run_cli("train", "ddpm", "--data", "digits", "--steps", "6", "--batch-size", "16", "--out", str(out),
                "--quiet", *TINY)
    assert r.code == 0, r.err
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
