"""gmkit bench sweeps: models x samplers x steps x batches x dtypes, quality per configuration, DDIM's claim."""

from __future__ import annotations

import json

from conftest import run_cli

from gmkit.bench import ddim_claim


def test_bench_out_writes_results_and_plot(tiny_run, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli("bench", "--models", f"{tiny_run},vae,nosuchmodel", "--steps", "2,4", "--sampler", "ddpm,ddim",
                "--batch-size", "4", "--runs", "1", "--quality-samples", "8", "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert (out / "plot.png").is_file()
    saved = json.loads((out / "results.json").read_text())
    printed = json.loads(r.out)
    assert saved["results"] == printed["results"]
    rows = saved["results"]
    diffusion = [(row["sampler"], row["steps"]) for row in rows if row["family"] == "ddpm"]
    assert diffusion == [("ddpm", 2), ("ddpm", 4), ("ddim", 2), ("ddim", 4)]
    vae = [row for row in rows if row["family"] == "vae"]
    assert len(vae) == 1 and vae[0]["steps_applicable"] is False  # no steps: benched once, steps n/a
    assert all(row["quality"]["n"] == 8 and row["quality"]["fd"] >= 0 for row in rows)
    assert all(row["tflops"] is not None and row["gflops_per_image"] > 0 for row in rows)
    assert saved["skipped"][0]["model"] == "nosuchmodel"
    assert saved["ddim_claim"]["status"] in ("reached", "not reached")
    assert saved["environment"]["gmkit"] and saved["environment"]["quality_samples"] == 8


def test_bench_dtype_sweep_without_quality(tmp_path):
    r = run_cli("bench", "--models", "vae", "--dtype", "fp32,bf16", "--batch-size", "2,4", "--runs", "1", "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)["results"]
    assert [(row["dtype"], row["batch"]) for row in rows] == [("float32", 2), ("float32", 4), ("bfloat16", 2), ("bfloat16", 4)]
    assert all(row["quality"] is None for row in rows)


def test_ddim_claim_picks_fewest_steps_within_tolerance():
    def row(sampler, steps, fd, ips):
        return {"model": "m", "family": "ddpm", "sampler": sampler, "steps": steps, "batch": 16, "dtype": "float32",
                "images_per_s": ips, "quality": {"fd": fd, "n": 128}}

    rows = [row("ddpm", 1000, 10.0, 0.1), row("ddim", 10, 15.0, 10.0), row("ddim", 20, 10.8, 5.0),
            row("ddim", 50, 10.1, 2.0)]
    claim = ddim_claim(rows)
    assert claim["status"] == "reached" and claim["steps"] == 20 and claim["speedup"] == 50.0
    assert ddim_claim(rows[1:])["status"] == "n/a"


def test_bench_times_long_runs_briefly_and_says_so(tiny_run):
    r = run_cli("bench", "--models", str(tiny_run), "--steps", "40", "--batch-size", "2", "--runs", "1", "--json")
    assert r.code == 0, r.err
    row = json.loads(r.out)["results"][0]
    t = row["timing"]
    assert t["mode"] == "extrapolated" and t["probe_calls"] == [4, 8] and t["full_calls"] == 40 and row["steps"] == 40
    assert t["per_call_ms"] > 0 and row["seconds_per_batch"] > 0 and "extrapolated" in json.loads(r.out)["environment"]["timing"]
    full = json.loads(run_cli("bench", "--models", str(tiny_run), "--steps", "40", "--batch-size", "2", "--runs", "1",
                              "--full", "--json").out)["results"][0]
    assert full["timing"]["mode"] == "full" and full["steps"] == 40
    human = run_cli("bench", "--models", str(tiny_run), "--steps", "40", "--batch-size", "2", "--runs", "1")
    assert human.code == 0 and "extrapolated" in human.out and "--full" in human.out  # stated in the output
