"""Hostile inputs: every case must end with exit code 2, one line on stderr, no traceback, and no file
touched (checkpoints, run folders and earlier outputs byte for byte as before, no temporary files left).

Categories: checkpoint configs and weights, config files and --set, sample/encode options (bounds,
non-finite values), input images, Hub ids, output paths, run folders, work size. Each case builds its
own hostile input in a temporary folder from the session's tiny trained run.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import TINY, run_cli
from gmkit.checkpoint import read_metadata


# -- building hostile files -------------------------------------------------------------------------

def _checkpoint(run: Path, out: Path, config=None, raw_config: str | None = None, state=None) -> str:
    """The tiny run's model with its config or tensors changed."""
    src = run / "model.safetensors"
    meta = dict(read_metadata(src))
    cfg = json.loads(meta["gmkit.config"])
    if config is not None:
        config(cfg)
    meta["gmkit.config"] = raw_config if raw_config is not None else json.dumps(cfg)
    tensors = load_file(src)
    if state is not None:
        tensors = state(tensors)
    save_file(tensors, out, metadata=meta)
    return str(out)


def _png_bomb(path: Path, side: int = 9000) -> str:
    """A PNG claiming side x side grey pixels (81M), compressed to ~80 KB."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"".join(b"\0" + b"\0" * side for _ in range(side)), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return str(path)


def _set(key, value):
    return lambda c: _nested(c, key, value)


def _nested(cfg: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        cfg = cfg[p]
    cfg[last] = value


@pytest.fixture(scope="module")
def hostile(tiny_run, tmp_path_factory) -> dict:
    """Hostile files, built once: checkpoints, images, config files, an earlier output folder."""
    d = tmp_path_factory.mktemp("hostile")
    f = {"run": str(tiny_run), "model": str(tiny_run / "model.safetensors"), "dir": d}
    f["wide"] = _checkpoint(tiny_run, d / "wide.safetensors", _set("unet.block_out_channels", [100000, 200000]))
    f["deep"] = _checkpoint(tiny_run, d / "deep.safetensors", _set("unet.layers_per_block", 1000000))
    f["huge_image"] = _checkpoint(tiny_run, d / "huge_image.safetensors", _set("unet.sample_size", 10**6))
    f["zero"] = _checkpoint(tiny_run, d / "zero.safetensors", _set("unet.norm_groups", 0))
    f["negative"] = _checkpoint(tiny_run, d / "negative.safetensors", _set("unet.head_dim", -4))
    f["list_config"] = _checkpoint(tiny_run, d / "list_config.safetensors", raw_config="[1, 2, 3]")
    f["int_nested"] = _checkpoint(tiny_run, d / "int_nested.safetensors", _set("unet", 5))
    f["string_int"] = _checkpoint(tiny_run, d / "string_int.safetensors", _set("unet.layers_per_block", "many"))
    f["nan_float"] = _checkpoint(tiny_run, d / "nan_float.safetensors", raw_config=read_metadata(
        tiny_run / "model.safetensors")["gmkit.config"].replace('"beta_end": 0.02', '"beta_end": NaN'))
    f["nan_weights"] = _checkpoint(tiny_run, d / "nan_weights.safetensors", state=lambda t: {
        k: v * float("nan") if v.is_floating_point() else v for k, v in t.items()})
    f["inf_weight"] = _checkpoint(tiny_run, d / "inf_weight.safetensors", state=lambda t: {
        k: (v.clone().fill_(float("inf")) if k.endswith("conv_in.weight") else v) for k, v in t.items()})
    f["bomb"] = _png_bomb(d / "bomb.png")
    whole = _png_bytes()
    (d / "truncated.png").write_bytes(whole[:len(whole) // 2])
    f["truncated"] = str(d / "truncated.png")
    (d / "not_image.png").write_text("this is not an image\n")
    f["not_image"] = str(d / "not_image.png")
    f["digit"] = str(d / "digit.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(f["digit"])
    (d / "list.json").write_text("[1, 2]")
    f["list_json"] = str(d / "list.json")
    (d / "earlier").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / "earlier" / f"{i:04d}.png")
    f["earlier"] = str(d / "earlier")
    f["latents"] = str(d / "z.safetensors")
    save_file({"noise": torch.randn(2, 1, 8, 8)}, f["latents"], metadata={"gmkit.kind": "latents"})
    return f


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)  # incompressible: cut = damage
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()


def _snapshot(*roots) -> dict[str, str]:
    """Every file below the roots with a hash of its bytes (temporary files included, by name)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() and p.name != ".gmkit.lock":
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# -- the cases: (id, argv builder, a word the one line must contain) ---------------------------------------

S = ["--steps", "2", "--quiet"]
CASES = [
    # checkpoint configs and weights: refused before anything is built
    ("config-huge-width", lambda f: ["sample", f["wide"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "parameters"),
    ("config-many-layers", lambda f: ["sample", f["deep"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "refused"),
    ("config-huge-image", lambda f: ["sample", f["huge_image"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "sample_size"),
    ("config-zero-size", lambda f: ["sample", f["zero"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "cannot build"),
    ("config-negative", lambda f: ["sample", f["negative"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "head_dim"),
    ("config-list-not-object", lambda f: ["sample", f["list_config"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "JSON object"),
    ("config-int-for-nested", lambda f: ["sample", f["int_nested"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "nested config"),
    ("config-string-for-int", lambda f: ["sample", f["string_int"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "whole number"),
    ("config-nan-float", lambda f: ["sample", f["nan_float"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "finite"),
    ("weights-nan", lambda f: ["sample", f["nan_weights"], "-n", "1", *S, "--out", f"{f['dir']}/o.png"], "NaN"),
    ("weights-inf", lambda f: ["encode", f["inf_weight"], f["digit"], "--steps", "2", "--out", f"{f['dir']}/z2.safetensors"], "infinite"),
    # sample / encode options: non-finite values, counts, steps and seeds that overflow
    ("option-nan-eta", lambda f: ["sample", f["run"], "--sampler", "ddim", "--eta", "nan", *S, "--out", f"{f['dir']}/o.png"], "finite"),
    ("option-inf-guidance", lambda f: ["sample", f["run"], "--guidance", "inf", *S, "--out", f"{f['dir']}/o.png"], "finite"),
    ("option-nan-strength", lambda f: ["sample", f["run"], "--image", f["digit"], "--strength", "nan", *S, "--out", f"{f['dir']}/o.png"], "finite"),
    ("option-huge-n", lambda f: ["sample", f["run"], "-n", "1000000000", *S, "--out", f"{f['dir']}/o.png"], "-n"),
    ("option-huge-steps-heun", lambda f: ["sample", f["run"], "--sampler", "heun", "--steps", "1000000000", "--out", f"{f['dir']}/o.png"], "--steps"),
    ("option-seed-overflow", lambda f: ["sample", f["run"], "-n", "2", "--seed", str(2**64), *S, "--out", f"{f['dir']}/o.png"], "--seed"),
    ("option-negative-seed", lambda f: ["sample", f["run"], "--seed", "-1", *S, "--out", f"{f['dir']}/o.png"], "--seed"),
    ("option-zero-batch", lambda f: ["sample", f["run"], "--batch-size", "0", *S, "--out", f"{f['dir']}/o.png"], "--batch-size"),
    ("option-huge-batch", lambda f: ["sample", f["run"], "--batch-size", "100000000", *S, "--out", f"{f['dir']}/o.png"], "--batch-size"),
    ("option-grid-too-big", lambda f: ["sample", f["run"], "-n", "5000", *S, "--out", f"{f['dir']}/o.png"], "folder/"),
    ("encode-huge-steps", lambda f: ["encode", f["run"], f["digit"], "--steps", "1000000000", "--out", f"{f['dir']}/z2.safetensors"], "--steps"),
    ("encode-huge-refine", lambda f: ["encode", f["run"], f["digit"], "--refine", "100000", "--out", f"{f['dir']}/z2.safetensors"], "--refine"),
    # input images
    ("image-bomb", lambda f: ["sample", f["run"], "--image", f["bomb"], *S, "--out", f"{f['dir']}/o.png"], "decompression bomb"),
    ("image-truncated", lambda f: ["encode", f["run"], f["truncated"], "--steps", "2", "--out", f"{f['dir']}/z2.safetensors"], "cannot read"),
    ("image-not-an-image", lambda f: ["sample", f["run"], "--image", f["not_image"], *S, "--out", f"{f['dir']}/o.png"], "cannot read"),
    ("image-missing", lambda f: ["encode", f["run"], f"{f['dir']}/nothing.png", "--out", f"{f['dir']}/z2.safetensors"], "no such"),
    # Hub ids: one line before any network call
    ("hub-dotdot-name", lambda f: ["sample", "org/..", *S], "Hub name"),
    ("hub-dotdot-subfolder", lambda f: ["sample", "org/name/../../etc", *S], "subfolder"),
    ("hub-bad-revision", lambda f: ["sample", "org/name@../x", *S], "revision"),
    ("hub-absurd-length", lambda f: ["sample", "org/" + "a" * 5000, *S], "characters"),
    ("hub-double-dash", lambda f: ["sample", "org--x/name", *S], "Hub name"),
    # outputs: never a model, an input, a system folder; image folders never mixed
    ("out-is-the-model", lambda f: ["sample", f["model"], "-n", "1", *S, "--out", f["model"]], "input"),
    ("out-is-a-bundled-model", lambda f: ["sample", f["run"], "-n", "1", *S, "--out", _bundled_file()], "model checkpoint"),
    ("out-is-the-input", lambda f: ["decode", "vae", f["latents"], "--out", f["latents"]], "input"),
    ("out-system-folder", lambda f: ["sample", f["run"], "-n", "1", *S, "--out", "/proc/gmkit-test.png"], "cannot write"),
    ("out-folder-with-images", lambda f: ["sample", f["run"], "-n", "2", *S, "--out", f["earlier"] + "/"], "--overwrite"),
    ("encode-out-is-the-model", lambda f: ["encode", f["run"], f["digit"], "--steps", "2", "--out", f["model"]], "model checkpoint"),
    ("quantize-out-is-the-model", lambda f: ["quantize", f["latents"], "--codebook", "2", "--out", f["model"]], "model checkpoint"),
    # training: configs and --set take the flags' checks; a run is never overwritten silently
    ("set-lr-word", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--set", "train.lr=fast"], "train.lr"),
    ("set-lr-nan", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--set", "train.lr=NaN"], "finite"),
    ("set-negative-steps", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--set", "train.steps=-5"], "train.steps"),
    ("set-ema-decay", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--set", "train.ema_decay=2"], "ema_decay"),
    ("set-seed-overflow", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--seed", str(2**70)], "seed"),
    ("flag-lr-nan", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--lr", "nan"], "--lr"),
    ("set-huge-width", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--quiet",
                                  "--set", "unet.block_out_channels=[100000,200000]"], "parameters"),
    ("set-zero-groups", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--quiet",
                                   "--set", "unet.norm_groups=0"], "cannot build"),
    ("set-int-for-section", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--set", "unet=5"], "nested"),
    ("config-file-list", lambda f: ["train", "ddpm", "--data", "digits", "--out", f"{f['dir']}/t", "--config", f["list_json"]], "JSON object"),
    ("train-over-existing-run", lambda f: ["train", "vae", "--data", "digits", "--steps", "1", "--out", f["run"], "--quiet"], "--overwrite"),
]


def _bundled_file() -> str:
    from gmkit.registry import bundled_path

    return str(bundled_path("vae"))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_damages_nothing(hostile, case):
    _, argv, word = case
    args = argv(hostile)
    roots = [hostile["dir"], hostile["run"], Path(_bundled_file()).parent]
    before = _snapshot(*roots)
    r = run_cli(*args)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.code == 2, (r.code, r.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("gmkit: error: "), r.err
    assert "Traceback" not in r.err and word in lines[0], lines[0]
    assert _snapshot(*roots) == before  # nothing written, replaced or left behind


# -- beyond exit code 2: what hostile inputs must *not* break -------------------------------------------

def test_odd_images_are_read_right(tmp_path):
    """16-bit (scaled, not clipped), CMYK, palette, animated and EXIF-less images all decode to 8 bits."""
    from gmkit.imageio import read_image

    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "g16.png")
    assert np.asarray(read_image(str(tmp_path / "g16.png"))).mean() == 128  # was 254 (clipped)
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    frames = [Image.new("L", (8, 8), v) for v in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    Image.new("L", (8, 8), 77).convert("P").save(tmp_path / "p.png")
    notes: set = set()
    assert read_image(str(tmp_path / "c.jpg"), notes).mode == "RGB"
    assert np.asarray(read_image(str(tmp_path / "a.gif"), notes)).max() <= 12  # the first frame
    assert read_image(str(tmp_path / "p.png"), notes).mode in ("L", "RGB")
    assert {"CMYK", "animated (first frame)", "palette"} <= notes


def test_non_finite_output_is_refused_not_a_black_image(tiny_run, tmp_path, monkeypatch):
    from gmkit.families.ddpm import DDPM

    monkeypatch.setattr(DDPM, "sample", lambda self, gens, **k: torch.full((len(gens), 1, 8, 8), float("nan")))
    r = run_cli("sample", str(tiny_run), "-n", "2", "--steps", "2", "--out", str(tmp_path / "o.png"))
    assert r.code == 2 and "NaN" in r.err and not (tmp_path / "o.png").exists()


def test_overwrite_replaces_an_image_folder_and_a_run(tiny_run, tmp_path):
    out = tmp_path / "imgs"
    assert run_cli("sample", str(tiny_run), "-n", "3", "--steps", "2", "--out", f"{out}/", "-q").code == 0
    r = run_cli("sample", str(tiny_run), "-n", "1", "--steps", "2", "--out", f"{out}/", "--overwrite", "-q")
    assert r.code == 0 and sorted(p.name for p in out.iterdir()) == ["0000.png"]  # never a mix of two runs
    run = tmp_path / "run"
    base = ["train", "ddpm", "--data", "digits", "--steps", "1", "--batch-size", "8", "--out", str(run), "-q", *TINY]
    assert run_cli(*base).code == 0
    first = (run / "model.safetensors").read_bytes()
    (run / ".model.safetensors.x1y2.tmp").write_bytes(b"left by a kill -9")
    r = run_cli(*base, "--overwrite", "--seed", "1")
    assert r.code == 0 and (run / "model.safetensors").read_bytes() != first
    assert not list(run.glob(".*.tmp"))  # stale temporary files are cleaned


def test_a_second_trainer_gets_one_line(tmp_path):
    from gmkit.outputs import run_lock

    run = tmp_path / "run"
    with run_lock(run):  # as if another process were training here
        r = run_cli("train", "ddpm", "--data", "digits", "--steps", "1", "--out", str(run), "-q", *TINY)
    assert r.code == 2 and "another gmkit process" in r.err and len(r.err.strip().splitlines()) == 1


def test_resume_says_from_which_step(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = run_cli("train", "ddpm", "--steps", "7", "--resume", str(run))
    assert r.code == 0 and "from step 6" in r.err


def test_quantize_refuses_inputs_over_its_memory_bound(tmp_path, monkeypatch):
    import gmkit.cli.quantize as q

    monkeypatch.setattr(q, "MAX_INPUT_BYTES", 1000)
    save_file({"mean": torch.randn(100, 4)}, tmp_path / "z.safetensors")
    r = run_cli("quantize", str(tmp_path / "z.safetensors"), "--codebook", "2", "--out", str(tmp_path / "q.safetensors"))
    assert r.code == 2 and "limit" in r.err and not (tmp_path / "q.safetensors").exists()


def test_a_local_folder_named_like_a_bundled_model_is_said(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("vae").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save("vae/0000.png")  # images, not a model
    r = run_cli("encode", "vae", "vae/", "--out", "z.safetensors")
    assert r.code == 0 and "using the bundled model" in r.err
    r = run_cli("encode", "./vae", "vae/", "--out", "z2.safetensors")
    assert r.code == 2 and "no model.safetensors" in r.err


def test_input_far_from_the_training_data_gets_a_note(tmp_path):
    rgb = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    r = run_cli("encode", "vae", str(tmp_path / "photo.jpg"), "--out", str(tmp_path / "z.safetensors"))
    assert r.code == 0 and "far from what this model was trained on" in r.err and "colour" in r.err


def test_sigterm_during_a_long_sample_keeps_the_images_written(tiny_run, tmp_path):
    """A real process, a real SIGTERM: exit 130, every finished batch kept, no temporary file left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "imgs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "gmkit", "sample", str(tiny_run), "-n", "100000", "--batch-size", "1",
                          "--steps", "20", "--out", f"{out}/", "-q"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # not a timing assertion: a bound on waiting for the first file
        while not (out.is_dir() and any(out.glob("*.png"))) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    kept = sorted(out.glob("*.png"))
    assert p.returncode == 130 and "kept" in err, err[-1000:]
    assert kept and kept[0].name == "0000.png" and not list(out.glob(".*"))
    for f in kept:
        Image.open(f).load()  # every file kept is a whole image
