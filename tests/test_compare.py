"""gmkit compare: the textbook table on tiny models, its files, and n/a cells with reasons."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, run_cli

FAST = ["--samples", "8", "--slow-samples", "8", "--sweep-samples", "8", "--sweep-steps", "3",
        "--likelihood-images", "16", "--batch-size", "8"]


def test_compare_writes_report_sheet_plots_and_html(tiny_run, tmp_path):
    out = tmp_path / "report"
    r = run_cli("compare", "--models", f"{tiny_run},vae,nosuchmodel", "--data", "mnist", "--out", str(out), *FAST)
    assert r.code == 0, r.err
    assert "warning" in r.err and "nosuchmodel" in r.err  # unknown model: a warning, not a crash
    for name in ("report.json", "samples.png", "quality_vs_steps.png", "training_loss.png", "index.html"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    tiny, vae, unknown = report["models"]
    # measured cells
    assert tiny["cells"]["quality"]["n"] == 8 and tiny["cells"]["quality"]["fd"] >= 0
    assert tiny["cells"]["speed"]["images_per_s"] > 0
    assert tiny["cells"]["stability"]["logged_steps"] == 6  # the run folder's log.jsonl
    assert tiny["cells"]["latent"]["kind"] == "none"
    assert vae["cells"]["latent"]["kind"] == "continuous" and vae["cells"]["latent"]["shape"] == [16]
    assert vae["cells"]["likelihood"]["value"] > 0
    assert tiny["cells"]["parameters"]["total"] > 0
    # n/a with a reason, never a failed table
    assert tiny["cells"]["likelihood"]["value"] > 0  # diffusion: bits/dim through the probability-flow ODE
    assert "probability-flow ODE" in tiny["cells"]["likelihood"]["text"]
    assert all(c["na"] == "unknown model" for c in unknown["cells"].values())
    # honesty: data, counts, seeds, versions
    assert report["environment"]["torch"] and report["environment"]["gmkit"]
    assert report["models"][0]["info"]["sample_note"].startswith("8 images (seeds 0-7)")
    assert any(p["sampler"] == "ddim" and p["steps"] == 3 for p in report["quality_vs_steps"])
    # the page stands alone and shows the table's values
    html = (out / "index.html").read_text()
    assert not re.search(r"https?://", html)
    assert "data:image/png;base64," in html
    assert vae["cells"]["quality"]["text"] in html and "unknown model" in html
    assert "samples (first 16" in html


def test_compare_json_and_seed_spread(tmp_path):
    r = run_cli("compare", "--models", "vae", "--json", "--seeds", "2", "--train-steps", "3", *FAST)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    spread = report["seed_spread"]["vae"]
    assert len(spread["runs"]) == 2 and "fd_std" in spread
    assert "seeds" in report["models"][0]["cells"]["stability"]["text"]


def test_torchrun_sampling_matches_one_process_and_compare_reads_the_folder(tiny_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_cli("sample", str(tiny_run), "-n", "7", "--batch-size", "2", "--steps", "4", "--seed", "3",
                "--out", f"{one}/", "--quiet")
    assert r.code == 0, r.err
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "gmkit", "sample", str(tiny_run), "-n", "7", "--batch-size", "2", "--steps", "4", "--seed", "3",
           "--out", f"{two}/", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["files"] == 7
    names = sorted(f.name for f in one.iterdir())
    assert names == sorted(f.name for f in two.iterdir()) == [f"{i:04d}.png" for i in range(7)]
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)
    # only folder output under torchrun (refused from torchrun's environment, before any process group)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", "2")
        bad = run_cli("sample", str(tiny_run), "-n", "7", "--steps", "4", "--out", str(tmp_path / "grid.png"))
    assert bad.code == 2 and "folder" in bad.err
    # compare (and metrics) take such a folder
    r = run_cli("compare", "--models", str(two), "--json", *FAST[:2])
    assert r.code == 0, r.err
    col = json.loads(r.out)["models"][0]
    assert col["cells"]["quality"]["n"] == 7 and "not a model" in col["cells"]["likelihood"]["na"]


def test_nonfinite_samples_are_excluded_and_counted():
    from gmkit.compare import Column, Settings, _quality_cells
    from gmkit.data import load_data

    x = load_data("mnist", "test").images(12)
    x[:2] = float("nan")
    q = _quality_cells(Column("m"), x, Settings(), "0-11")
    assert q["n"] == 10 and q["nonfinite_samples"] == 2 and "2 of 12 samples non-finite" in q["text"]


def test_compare_finds_the_log_through_the_recipe_even_with_a_space(tmp_path):
    """A checkpoint file (not its folder) names its run folder in its recipe; a space in it must not matter."""
    from conftest import TINY

    run = tmp_path / "my runs" / "tiny ddpm"
    r = run_cli("train", "ddpm", "--data", "digits", "--steps", "5", "--batch-size", "8", "--out", str(run), "--quiet", *TINY)
    assert r.code == 0, r.err
    from gmkit.checkpoint import read_metadata
    from gmkit.compare import find_log

    meta = read_metadata(run / "model.safetensors")
    assert json.loads(meta["gmkit.recipe"])["run_folder"] == str(run.resolve())
    records, where, why = find_log(str(run / "model.safetensors"), meta, {})
    assert records is not None and [x["step"] for x in records] == [1, 2, 3, 4, 5], why
    assert str(run / "log.jsonl") in where
    # A checkpoint from before recipes stored the folder: its quoted command is parsed as the shell would.
    legacy = dict(meta, **{"gmkit.recipe": json.dumps({"command": f"gmkit train ddpm --out '{run}'", "step": 5})})
    assert find_log(str(run / "model.safetensors"), legacy, {})[0] is not None
