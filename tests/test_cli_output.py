"""Output discipline: results on stdout, messages and progress on stderr, never binary to a terminal,
one-line parse errors, defaults and completion in --help."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the other end is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_train_json_is_pure_from_a_terminal(tmp_path):
    """`gmkit train ... --json > out.json` typed at a terminal: the bar goes to the terminal, only JSON to the file."""
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "gmkit", "train", "ddpm", "--data", "digits", "--steps", "3", "--batch-size", "8",
           "--out", str(tmp_path / "run"), "--json", *TINY]
    with open(tmp_path / "out.json", "wb") as out:
        p = subprocess.Popen(cmd, stdin=slave, stdout=out, stderr=slave, env=_env(COLUMNS="100"))
        os.close(slave)
        terminal = _drain(master)
        assert p.wait(timeout=300) == 0, terminal.decode(errors="replace")[-2000:]
    os.close(master)
    summary = json.loads((tmp_path / "out.json").read_text())  # the whole file is one JSON document
    assert summary["step"] == 3
    assert b"train" in terminal and b"3/3" in terminal  # the progress bar went to the terminal (stderr)


def test_binary_output_refuses_a_terminal(tiny_run, tmp_path):
    digit = tmp_path / "d.png"
    assert run_cli("sample", str(tiny_run), "-n", "1", "--steps", "2", "--out", str(digit), "--quiet").code == 0
    for args in (["encode", str(tiny_run), str(digit), "--steps", "2"], ["sample", str(tiny_run), "--steps", "2", "--out", "-"]):
        master, slave = pty.openpty()
        p = subprocess.run([sys.executable, "-m", "gmkit", *args], stdin=subprocess.DEVNULL, stdout=slave,
                           stderr=subprocess.PIPE, env=_env(), timeout=300)
        os.close(slave)
        leaked = _drain(master)
        os.close(master)
        assert p.returncode == 2 and leaked == b"", args
        lines = p.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "terminal" in lines[0] and "--out -" in lines[0], p.stderr


def test_parse_errors_are_one_line():
    for args, words in ((["sample", "ddpm", "--nope"], "--nope"), (["sample"], "model"), (["nosuch"], "nosuch"),
                        (["sample", "ddpm", "--steps", "abc"], "--steps")):
        r = run_cli(*args)
        lines = [ln for ln in r.err.strip().splitlines() if ln.strip()]
        assert r.code == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in r.err, (args, r.err)


def test_help_shows_defaults_aliases_and_completion():
    r = run_cli("train", "--help")
    assert r.code == 0 and "10,000" in r.out and "--output" in r.out
    r = run_cli("sample", "--help")
    for alias in ("--num-inference-steps", "--guidance-scale", "--num-images", "--output"):
        assert alias in r.out, alias
    assert "--install-completion" in run_cli("--help").out
    for command in ("bench", "compare", "likelihood"):  # one long name for the image count
        assert "--num-images" in run_cli(command, "--help").out, command


def test_results_go_to_stdout_and_tables_read_in_pipes(tiny_run, tmp_path):
    r = run_cli("models")
    assert r.code == 0 and "ddim" in r.out and "╭" not in r.out and "┃" not in r.out  # plain columns in a pipe
    header = next(ln for ln in r.out.splitlines() if ln.startswith("name"))
    assert header.split()[:3] == ["name", "family", "size"]
    r = run_cli("push", str(tiny_run), "me/tiny", "--dry-run", "--out", str(tmp_path / "up"))
    assert r.code == 0 and str(tmp_path / "up") in r.out
    z = tmp_path / "z.safetensors"
    assert run_cli("encode", "vae", str(tmp_path / "up" / "samples.png"), "--out", str(z), "--quiet").code == 0
    r = run_cli("quantize", str(z), "--codebook", "1", "--out", str(tmp_path / "q.safetensors"))
    assert r.code == 0 and "bits/vector" in r.out and "bits/vector" not in r.err
