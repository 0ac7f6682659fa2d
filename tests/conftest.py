"""Shared fixtures: an isolated cache, an in-process CLI runner, and a tiny trained checkpoint."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

# The suite runs in two xdist workers (pyproject's addopts): one OpenMP thread each, set before
# anything imports torch, because two threads per process on a busy 2-core machine are far slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


# -- metrics: RGB image folders and tiny random transformers extractors (no downloads) ------------

def data_images(data):
    """All images of a loaded data set, whichever way the data layer hands them out."""
    from gmkit.metrics.reference import all_images

    return all_images(data)


def draw_shapes(folder: Path, n: int, seed: int, size: int = 64, palette: str = "warm") -> Path:
    """``n`` RGB PNGs of random ellipses and boxes; ``palette`` shifts the colours (a second distribution)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, hi = (120, 255) if palette == "warm" else (0, 140)
    for i in range(n):
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, size - 16, 2))
            w, h = (int(v) for v in rng.integers(8, 32, 2))
            colour = (int(rng.integers(lo, hi)), int(rng.integers(0, 255)), int(rng.integers(lo, hi)))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x0 + w, y0 + h], fill=colour)
        im.save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def rgb_folders(tmp_path_factory) -> tuple[Path, Path]:
    """(reference, samples): 60 and 12 RGB 64 px images of two colour distributions."""
    root = tmp_path_factory.mktemp("rgb")
    return draw_shapes(root / "reference", 60, 0), draw_shapes(root / "samples", 12, 1, palette="cold")


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer DINOv2 saved with its image processor."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                             image_size=32, patch_size=8)).save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised tiny CLIP with a character-level tokenizer and its image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    out = tmp_path_factory.mktemp("clip")
    chars = [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out
