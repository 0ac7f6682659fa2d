"""Training stability from a run's log.jsonl: loss variation over the last part of training, and
divergence; and where a checkpoint's log is (its recipe's run folder)."""

from __future__ import annotations

import json
import math
import shlex
import statistics
from pathlib import Path

from .columns_base import na

TAIL = 0.2  # stability: the last 20% of logged steps


def read_log(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line.replace("NaN", "null").replace("Infinity", "null")))
            except json.JSONDecodeError:
                continue
    return records


def stability_from_log(records: list[dict], source: str) -> dict:
    """Loss variation over the last part of training, and divergence.

    cv = std / |mean| of the logged loss over the last 20% of logged steps; diverged = a non-finite
    loss, or the tail mean above twice the lowest 5-point moving average reached earlier."""
    pts = [(r["step"], r.get("loss")) for r in records if "step" in r and "loss" in r]
    if len(pts) < 5:
        return na(f"too few logged steps ({len(pts)}) in {source}")
    bad = [s for s, v in pts if v is None or not math.isfinite(v)]
    vals = [(s, v) for s, v in pts if v is not None and math.isfinite(v)]
    k = max(3, int(len(vals) * TAIL))
    tail = [v for _, v in vals[-k:]]
    mean, std = statistics.fmean(tail), statistics.pstdev(tail)
    cv = std / abs(mean) if mean else float("inf")
    ma = [statistics.fmean(v for _, v in vals[i:i + 5]) for i in range(0, max(len(vals) - 4, 1))]
    diverged = bool(bad) or mean > 2 * min(ma) and min(ma) > 0
    first = statistics.fmean(v for _, v in vals[:k])
    out = {"source": source, "logged_steps": len(pts), "last_step": pts[-1][0], "tail_from_step": vals[-k][0],
           "tail_mean": round(mean, 6), "tail_std": round(std, 6), "tail_cv": round(cv, 4),
           "start_mean": round(first, 6), "nonfinite_steps": bad[:10], "diverged": diverged,
           "rule": "cv = std/|mean| of the loss over the last 20% of logged steps; diverged = non-finite loss or "
                   "tail mean > 2x the lowest 5-point moving average"}
    out["text"] = (f"loss cv {cv:.1%} over steps {vals[-k][0]}-{pts[-1][0]}; "
                   + ("DIVERGED" if diverged else "no divergence"))
    return out


def _log_interval(records: list[dict]) -> int:
    steps = [r["step"] for r in records if "step" in r]
    gaps = [b - a for a, b in zip(steps, steps[1:]) if b > a]
    return statistics.median(gaps) if gaps else 1


def _legacy_run_folder(command: str) -> str | None:
    """The run folder of a checkpoint written before recipes stored it: its command's --out (or
    --resume) value, parsed as the shell would (quoted paths with spaces included)."""
    try:
        parts = shlex.split(command)
    except ValueError:
        return None
    flag = next((f for f in ("--out", "--resume") if f in parts[:-1]), None)  # a resumed run writes to its folder
    return parts[parts.index(flag) + 1] if flag else None


def find_log(source: str, meta: dict, overrides: dict[str, str]) -> tuple[list[dict] | None, str, str]:
    """The training log behind a model: (records, where, why-not). From --log, the model's run
    folder, or the run folder its recipe names when that folder trained the same config and its
    log reaches the checkpoint's step (records after that step belong to a later checkpoint)."""
    if source in overrides:
        p = Path(overrides[source])
        p = p / "log.jsonl" if p.is_dir() else p
        return (read_log(p), str(p), "") if p.is_file() else (None, "", f"--log {source}={overrides[source]}: no such log")
    p = Path(source)
    if p.is_dir():
        log = p / "log.jsonl"
        return (read_log(log), str(log), "") if log.is_file() else (None, "", f"run folder {source} has no log.jsonl")
    recipe = json.loads(meta.get("gmkit.recipe", "{}") or "{}")
    run, step = recipe.get("run_folder") or _legacy_run_folder(recipe.get("command", "")), recipe.get("step")
    if not run or not (Path(run) / "log.jsonl").is_file():
        where = f", and its recipe's run folder {run} is not here" if run else ""
        return None, "", f"no training log: none in the checkpoint{where}; give --log or --seeds N"
    log = Path(run) / "log.jsonl"
    model = Path(run) / "model.safetensors"
    if model.is_file():
        from ..checkpoint import read_metadata

        theirs = json.loads(read_metadata(model).get("gmkit.config", "{}") or "{}")
        if theirs != json.loads(meta.get("gmkit.config", "{}") or "{}"):
            return None, "", f"the run folder its recipe names ({run}) trained a different config: not this checkpoint's run"
    records = read_log(log)
    if step is not None and records:
        step = int(step)
        kept = [r for r in records if r.get("step", 0) <= step]
        last = kept[-1]["step"] if kept else None
        if last is None or step - last >= _log_interval(records):
            return None, "", (f"the run folder its recipe names ({run}) logs steps {records[0].get('step')}-"
                              f"{records[-1].get('step')}, the checkpoint is from step {step}: not this checkpoint's run")
        records = kept
    return records, f"{log} (named by the checkpoint's recipe; steps up to {step})", ""

