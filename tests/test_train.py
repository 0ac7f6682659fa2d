"""The training loop: exact resume, divergence handling, interruption, and DDP with two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import TINY, free_port, run_cli


def _train(out, steps, *extra):
    r = run_cli("train", "ddpm", "--data", "digits", "--steps", str(steps), "--batch-size", "16", "--out", str(out),
                "--quiet", "--checkpoint-every", "100", *TINY, *extra)
    assert r.code == 0, r.err
    return r


def test_train_writes_a_self_describing_run_folder(tmp_path):
    out = tmp_path / "run"
    _train(out, 3)
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "train_state.safetensors", "log.jsonl", "samples"}
    from gmkit.checkpoint import read_metadata

    meta = read_metadata(out / "model.safetensors")
    assert meta["gmkit.family"] == "ddpm"
    recipe = json.loads(meta["gmkit.recipe"])
    assert recipe["command"].startswith("gmkit train ddpm --data digits") and recipe["step"] == 3
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all("loss" in r and "grad_norm" in r for r in log)
    assert list((out / "samples").glob("step_*.png"))


def test_resume_equals_uninterrupted_run(tmp_path):
    _train(tmp_path / "straight", 8)
    _train(tmp_path / "split", 4)
    _train(tmp_path / "split", 8, "--resume", str(tmp_path / "split"))
    a = load_file(tmp_path / "straight" / "train_state.safetensors")
    b = load_file(tmp_path / "split" / "train_state.safetensors")
    weights = [k for k in a if k.startswith(("model.", "ema.", "optim."))]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights), [k for k in weights if not torch.equal(a[k], b[k])][:3]
    ma, mb = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_resume_of_missing_run_is_a_clear_error(tmp_path):
    r = run_cli("train", "ddpm", "--data", "digits", "--steps", "2", "--resume", str(tmp_path / "nothing"))
    assert r.code != 0 and "train_state" in r.err and "Traceback" not in r.err


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _train(out, 2)
    before = (out / "model.safetensors").read_bytes()
    from gmkit.families.ddpm import DDPM as Diffusion

    real = Diffusion.forward

    def exploding(self, batch):
        losses = real(self, batch)
        return {"loss": losses["loss"] * float("nan")}

    monkeypatch.setattr(Diffusion, "forward", exploding)
    r = run_cli("train", "ddpm", "--steps", "5", "--resume", str(out), "--quiet")
    assert r.code != 0 and "loss became nan" in r.err and "Traceback" not in r.err
    assert (out / "model.safetensors").read_bytes() == before


def test_interrupt_saves_a_checkpoint_that_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    from gmkit.families.base import Family

    real = Family.train_step
    calls = {"n": 0}

    def interrupt_at_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Family, "train_step", interrupt_at_third)
    r = run_cli("train", "ddpm", "--data", "digits", "--steps", "10", "--batch-size", "16", "--out", str(out), *TINY)
    assert r.code == 130 and "--resume" in r.err
    from gmkit.checkpoint import read_metadata

    assert read_metadata(out / "train_state.safetensors")["gmkit.step"] == "2"


def test_kill_9_keeps_a_whole_checkpoint_that_resumes(tmp_path):
    """A real process killed with SIGKILL while it checkpoints every step: the files left load, the run
    resumes from the step they hold, and the next run removes any temporary file the kill left."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "gmkit", "train", "ddpm", "--data", "digits", "--steps", "100000",
                          "--batch-size", "8", "--checkpoint-every", "1", "--out", str(out), "-q", *TINY],
                         env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240  # not a timing assertion: a bound on waiting for a few checkpoints
        while p.poll() is None and time.monotonic() < deadline and len(_log_lines(out)) < 3:
            time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGKILL
    from gmkit.checkpoint import read_metadata

    step = int(read_metadata(out / "train_state.safetensors")["gmkit.step"])
    assert step >= 1 and load_file(out / "train_state.safetensors") and load_file(out / "model.safetensors")
    (out / ".model.safetensors.k9.tmp").write_bytes(b"as a kill -9 mid-write leaves it")
    r = run_cli("train", "ddpm", "--steps", str(step + 1), "--resume", str(out))
    assert r.code == 0 and f"from step {step}" in r.err, r.err[-2000:]
    assert not list(out.glob(".*.tmp"))
    assert json.loads(read_metadata(out / "model.safetensors")["gmkit.recipe"])["step"] == step + 1


def _log_lines(out: Path) -> list[str]:
    try:
        return (out / "log.jsonl").read_text().splitlines()
    except OSError:
        return []


def test_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "gmkit", "train", "ddpm", "--data", "digits", "--device", "cpu", "--steps", "4", "--batch-size", "16",
           "--out", str(out), "--json", "--quiet", *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert summary["ranks_agree"] is True  # DDP kept every rank's weights identical
    from gmkit.loop import state_digest

    state = load_file(out / "train_state.safetensors")
    saved = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assert state_digest(saved) == summary["weights_sha256"]  # the checkpoint is what rank 0 reported
    recipe = json.loads(__import__("gmkit.checkpoint", fromlist=["x"]).read_metadata(out / "model.safetensors")["gmkit.recipe"])
    assert recipe["world_size"] == 2
