"""``gmkit compare``: the textbook table of generative families, measured.

For each model, on the same data: latent space, training stability, sample quality, sampling
speed, likelihood and parameters. A model that cannot fill a cell gets ``n/a`` with the reason;
an unknown model gets a column of n/a. Every number carries what it was measured on (sample
counts, seeds, device), and ``write_report`` leaves report.json, a sample sheet, plots and a
self-contained index.html.

    columns.py    one model's measurements (measure)
    stability.py  training stability from a run's log.jsonl, and where that log is
    report.py     report.json, sample sheet, plots, index.html and the table's rows
    claims.py     the textbook's cells and the checks of its claims
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..devices import torch_dtype
from ..errors import GmkitError
from ..measure import quality_extractor, score_images
from .claims import TEXTBOOK, textbook_claims
from .columns import PROPERTIES, Column, Settings, _quality_cells, likelihood, measure, seed_spread, steps_sweep
from .columns_base import na
from .report import table_rows, write_report
from .stability import find_log, read_log, stability_from_log

__all__ = ["compare", "Settings", "Column", "measure", "likelihood", "table_rows", "write_report", "find_log",
           "read_log", "stability_from_log", "textbook_claims", "TEXTBOOK", "na", "_quality_cells", "environment"]


def compare(models: list[str], s: Settings, say: Callable[[str], None] = lambda m: None,
            workdir: Path | None = None, revision: str | None = None,
            token: str | None = None) -> tuple[dict, list[Column]]:
    """The table for ``models``. ``revision``: of the one Hub repo among them (named ``org/name@REVISION``
    in the report); ``token``: for every Hub repo and a Hub extractor (never written into the report)."""
    from ..data import load_data
    from ..registry import with_revision

    t_start = time.perf_counter()
    pinned = with_revision(models, revision)  # before anything loads: a revision for several repos is refused
    if pinned != list(models):  # --log names the model as given
        renamed = dict(zip(models, pinned))
        s = replace(s, logs={renamed.get(k, k): v for k, v in s.logs.items()})
    models = pinned
    dev = torch.device(s.device)
    dt = torch_dtype(s.dtype)
    try:
        test_data = load_data(s.data, "test")
    except GmkitError as e:
        raise GmkitError(f"--data {s.data}: {e}") from None
    ext = None
    try:  # one extractor for every quality cell, loaded once and named in the report
        ext, why = quality_extractor(s.data, s.extractor, s.device, token=token), None
    except GmkitError as e:
        why = str(e)
    if why:
        say(f"gmkit: warning: sample quality is n/a: {why}")
        extractor_info = {"error": why}
    else:
        extractor_info = {"name": ext.name, "spec": ext.spec, "description": ext.description, "fd_name": ext.fd_name,
                          "kid_name": ext.kid_name}
    cols = [measure(m, s, test_data, dev, dt, say, token=token, ext=ext) for m in models]
    # The same n for every model: FD is biased by the sample count, KID is not.
    ns = [c.cells["quality"]["n"] for c in cols if "n" in c.cells.get("quality", {})]
    common = min(ns) if ns else None
    for c in cols:
        q = c.cells.get("quality", {})
        if common and "n" in q and c.images is not None:
            if q["n"] == common:
                c.cells["quality_common"] = {"n": common, "fd": q["fd"], "baseline_fd": q["baseline_fd"],
                                             "text": f"{q['fd']:.2f} (n={common}; real {q['baseline_fd']:.2f})"}
            else:
                finite = c.images[torch.isfinite(c.images).flatten(1).all(1)]
                qc = score_images(finite[:common], s.data, f"first {common} finite of 0-{q['n'] - 1}",
                                  ext or s.extractor, s.device)
                c.cells["quality_common"] = {"n": common, "fd": qc["fd"], "baseline_fd": qc["baseline_fd"],
                                             "text": f"{qc['fd']:.2f} (n={common}; real {qc['baseline_fd']:.2f})"}
        elif "quality_common" not in c.cells:
            c.cells["quality_common"] = dict(c.cells.get("quality", na("no samples")))
    sweep = steps_sweep(cols, s, dev, say, ext) if not why else []
    seeds = {}
    if s.seeds:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gmkit-compare-") as tmp:
            seeds = seed_spread(cols, s, dev, Path(workdir or tmp) / "seed-runs", say, ext)
        for c in cols:
            sp = seeds.get(c.family)
            if sp:
                st = c.cells.get("stability", {})
                extra = (f"FD {sp['fd_mean']:.1f} ± {sp['fd_std']:.1f} over {len(sp['runs'])} seeds "
                         f"({sp['train_steps']} steps)" if "fd_mean" in sp else f"{sp['diverged']} of {len(sp['runs'])} seeds diverged")
                base = {"log_na": st["na"]} if "na" in st else st
                c.cells["stability"] = {**base, "seeds": sp, "text": (st["text"] + "; ") + extra}
    for c in cols:
        for p in PROPERTIES:
            c.cells.setdefault(p, na("not measured"))
    report = {
        "title": "gmkit compare: the textbook table of generative families, measured",
        "data": {"name": s.data, "reference": f"{s.data} held-out split ({len(test_data)} images)",
                 "note": test_data.note},
        "extractor": extractor_info,
        "settings": asdict(s),
        "models": [{"source": c.source, "family": c.family, "info": c.info, "cells": c.cells} for c in cols],
        "quality_vs_steps": sweep,
        "seed_spread": seeds,
        "common_n": common,
        "environment": environment(dev),
        "seconds": round(time.perf_counter() - t_start, 1),
        "notes": [
            "Image i of every model comes from seed i (seeds 0..n-1); sample counts per model in models[].info.samples.",
            f"Configurations with more than {s.slow_steps} network calls per image get {s.slow_samples} samples "
            f"(--slow-samples) instead of {s.samples}, to keep the run short: their FD is noisier and biased upward; "
            "compare them on 'FD at a common n' and on KID (unbiased in n).",
            (f"{extractor_info['fd_name']} and {extractor_info['kid_name']} are measured through the "
             f"{extractor_info['name']} extractor: {extractor_info['description']}. "
             + ("Only this extractor's figures are FID." if extractor_info["fd_name"] == "FID" else
                "They are not FID and not comparable with published FID.")) if not why
            else f"Sample quality is n/a: {why}",
            "Sampling speed: median seconds per full batch after one warm-up, on the device below, "
            "measured while generating the quality samples.",
            "Training stability: loss statistics of the model's own training log where one is available; "
            "loss scales differ by family, so compare the cv and divergence, not the loss values. "
            "With --seeds N: spread of final FD over N short training runs of the family's default config.",
        ],
    }
    report["claims"] = textbook_claims(report)
    for c in cols:
        c.net = c.opts = None  # the networks were kept for the sweep only
    return report, cols


def environment(dev) -> dict:
    return {"gmkit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(dev), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "platform": platform.platform()}

