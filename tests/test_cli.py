"""The command line as a user runs it: outputs, seeds, errors (one line, non-zero exit, no traceback)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import run_cli


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys; sys.argv=['gmkit','--help']\nfrom gmkit.cli import main\ntry:\n main()\n"
            "except SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported by --help'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sample" in r.stdout and "train" in r.stdout


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "gmkit", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip()


def test_sample_grid_folder_tensor_and_stdout(tiny_run, tmp_path):
    grid = tmp_path / "grid.png"
    assert run_cli("sample", str(tiny_run), "-n", "4", "--steps", "5", "--out", str(grid)).code == 0
    assert Image.open(grid).size[0] > 8
    folder = tmp_path / "imgs/"
    assert run_cli("sample", str(tiny_run), "-n", "3", "--steps", "5", "--out", str(folder) + "/").code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    r = run_cli("sample", str(tiny_run), "-n", "2", "--steps", "5", "--out", "-")
    assert r.code == 0 and r.raw.startswith(b"\x89PNG")
    t = tmp_path / "x.safetensors"
    assert run_cli("sample", str(tiny_run), "-n", "2", "--steps", "5", "--out", str(t)).code == 0
    x = load_file(t)["images"]
    assert x.shape == (2, 1, 8, 8) and float(x.abs().max()) <= 1


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_seed_i_reproduces_image_i_alone(tiny_run, tmp_path, sampler):
    many, one = tmp_path / "many/", tmp_path / "one/"
    args = ["--sampler", sampler, "--steps", "8"]
    assert run_cli("sample", str(tiny_run), "-n", "4", "--seed", "0", "--batch-size", "3", *args, "--out", str(many) + "/").code == 0
    assert run_cli("sample", str(tiny_run), "-n", "1", "--seed", "3", *args, "--out", str(one) + "/").code == 0
    a, b = np.asarray(Image.open(many / "0003.png")), np.asarray(Image.open(one / "0000.png"))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # same image; batch size changes only float rounding
    again = tmp_path / "again/"
    assert run_cli("sample", str(tiny_run), "-n", "1", "--seed", "3", *args, "--out", str(again) + "/").code == 0
    assert (again / "0000.png").read_bytes() == (one / "0000.png").read_bytes()  # same command, same bytes


def test_encode_then_sample_from_init_roundtrip(tiny_run, tmp_path):
    src = tmp_path / "digit.png"
    Image.fromarray((np.indices((8, 8)).sum(0) * 16).astype(np.uint8)).save(src)
    z = tmp_path / "noise.safetensors"
    r = run_cli("encode", str(tiny_run), str(src), "--steps", "20", "--out", str(z), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["tensors"]["noise"] == [1, 1, 8, 8]
    back = tmp_path / "back.safetensors"
    assert run_cli("sample", str(tiny_run), "--init", str(z), "--sampler", "ddim", "--steps", "20", "--out", str(back)).code == 0
    assert load_file(back)["images"].shape == (1, 1, 8, 8)
    # Piping: encode to stdout, sample from stdin.
    piped = run_cli("encode", str(tiny_run), str(src), "--steps", "20")
    assert piped.code == 0 and piped.raw
    r = run_cli("sample", str(tiny_run), "--init", "-", "--sampler", "ddim", "--steps", "20", "--out", str(tmp_path / "p.png"),
                stdin=piped.raw)
    assert r.code == 0, r.err


def test_models_lists_bundled_defaults():
    r = run_cli("models", "--json")
    assert r.code == 0
    names = {m["name"] for m in json.loads(r.out)["bundled"]}
    assert {"ddpm", "ddim"} <= names


def test_bench_json(tiny_run):
    r = run_cli("bench", "--models", str(tiny_run), "--steps", "2,4", "--batch-size", "2", "--runs", "1", "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)["results"]
    assert [row["steps"] for row in rows] == [2, 4]
    assert all(row["images_per_s"] > 0 and row["peak_memory_mb"] > 0 for row in rows)


def _one_line_error(r, *words):
    assert r.code != 0
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    for w in words:
        assert w in lines[0], lines[0]


def test_error_unknown_model_lists_known():
    _one_line_error(run_cli("sample", "nosuchmodel", "--out", "x.png"), "nosuchmodel", "ddpm")


def test_error_bad_numbers(tiny_run, tmp_path):
    out = str(tmp_path / "x.png")
    _one_line_error(run_cli("sample", str(tiny_run), "--steps", "0", "--out", out), "--steps")
    _one_line_error(run_cli("sample", str(tiny_run), "-n", "-3", "--out", out), "-n")
    _one_line_error(run_cli("sample", str(tiny_run), "--steps", "5000", "--out", out), "steps")
    _one_line_error(run_cli("sample", str(tiny_run), "--eta", "2", "--out", out), "--eta")
    _one_line_error(run_cli("sample", str(tiny_run), "--sampler", "nope", "--steps", "3", "--out", out), "nope")
    _one_line_error(run_cli("sample", str(tiny_run), "--out", str(tmp_path / "x.txt")), "format")


def test_error_unwritable_output(tiny_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _one_line_error(run_cli("sample", str(tiny_run), "--out", str(blocker / "x.png")), "cannot write")


def test_error_corrupt_and_pickled_checkpoints(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _one_line_error(run_cli("sample", str(bad), "--out", str(tmp_path / "x.png")), "corrupt")
    pkl = tmp_path / "weights.ckpt"
    pkl.write_bytes(b"whatever")
    _one_line_error(run_cli("sample", str(pkl), "--out", str(tmp_path / "x.png")), "pickle")
    save_file({"w": __import__("torch").zeros(2)}, str(tmp_path / "plain.safetensors"))
    _one_line_error(run_cli("sample", str(tmp_path / "plain.safetensors"), "--out", str(tmp_path / "x.png")), "not a gmkit")


def test_error_shapes_do_not_match_config(tiny_run, tmp_path):
    tensors = load_file(tiny_run / "model.safetensors")
    from safetensors import safe_open

    with safe_open(tiny_run / "model.safetensors", "pt") as f:
        meta = f.metadata()
    key = next(k for k in tensors if k.endswith("conv_in.weight"))
    tensors[key] = tensors[key][:, :, :2].contiguous()
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata=meta)
    _one_line_error(run_cli("sample", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "x.png")), "shape")


def test_error_wrong_init_shape(tiny_run, tmp_path):
    import torch

    save_file({"noise": torch.zeros(2, 1, 5, 5)}, str(tmp_path / "n.safetensors"))
    _one_line_error(run_cli("sample", str(tiny_run), "--init", str(tmp_path / "n.safetensors"), "--out",
                            str(tmp_path / "x.png")), "shape")
    save_file({"noise": torch.full((1, 1, 8, 8), float("nan"))}, str(tmp_path / "nan.safetensors"))
    _one_line_error(run_cli("sample", str(tiny_run), "--init", str(tmp_path / "nan.safetensors"), "--out",
                            str(tmp_path / "x.png")), "NaN")


def test_error_hub_offline_without_cache(tmp_path):
    _one_line_error(run_cli("sample", "someone/not-cached", "--out", str(tmp_path / "x.png")), "HF_HUB_OFFLINE")


def test_debug_shows_traceback():
    r = run_cli("--debug", "sample", "nosuchmodel")
    assert r.code != 0 and "Traceback" in r.err


def test_error_missing_checkpoint(tmp_path):
    _one_line_error(run_cli("sample", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.png")), "no such file")
    (tmp_path / "run").mkdir()
    _one_line_error(run_cli("sample", str(tmp_path / "run"), "--out", str(tmp_path / "x.png")), "no model.safetensors")


def test_error_bad_set_and_family(tmp_path):
    _one_line_error(run_cli("train", "ddpm", "--data", "digits", "--steps", "1", "--set", "unet.nope=1",
                            "--out", str(tmp_path / "r")), "nope")
    _one_line_error(run_cli("train", "nosuchfamily", "--data", "digits", "--out", str(tmp_path / "r")), "nosuchfamily")
