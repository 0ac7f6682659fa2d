"""``gmkit compare --models vae,gan,flow,ddpm,ddim --out report/``: the textbook table, measured."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import DEVICE_HELP, DTYPE_HELP, MULTI_REVISION_HELP, MULTI_TOKEN_HELP, parse_int_list, positive, resolve_device, resolve_dtype
from .output import Output

DEFAULT_MODELS = "vae,vqvae,augvae,gan,flow,ddpm,ddim"


def compare_cmd(
    models: str = typer.Option(DEFAULT_MODELS, "--models", help="Comma-separated model sources (bundled names, run folders, files, Hub repos org/name[@REVISION], image folders)."),
    data: str = typer.Option("mnist", "--data", help="Data every model is measured on: a bundled name, a folder, a Hugging Face dataset (quality against its held-out split)."),
    extractor: Optional[str] = typer.Option(None, "--extractor", help="Feature extractor for sample quality: inception (FID), dinov2, clip, mnist, or a transformers model (folder or Hub id). Default: mnist for the bundled digits, else inception."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", "--output", help="Folder for report.json, samples.png, plots and index.html."),
    samples: int = typer.Option(256, "-n", "--num-images", "--samples", help="Images per model for quality and speed (seeds 0..N-1)."),
    slow_samples: int = typer.Option(16, "--slow-samples", help="Images for configurations with more than 100 network calls per image (DDPM-1000)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images generated at once."),
    sweep_steps: str = typer.Option("10,20", "--sweep-steps", help="Extra DDIM step counts for the quality-vs-steps plot of diffusion models ('' for none)."),
    sweep_samples: int = typer.Option(64, "--sweep-samples", help="Images per point of that sweep."),
    likelihood_images: int = typer.Option(500, "--likelihood-images", help="Held-out images for bits/dim."),
    seeds: int = typer.Option(0, "--seeds", help="Also train N short runs per family and report the spread of their quality."),
    train_steps: int = typer.Option(200, "--train-steps", help="Steps of each --seeds run."),
    log: list[str] = typer.Option([], "--log", help="MODEL=PATH: the log.jsonl (or run folder) a model was trained with."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    revision: Optional[str] = typer.Option(None, "--revision", help=MULTI_REVISION_HELP),
    token: Optional[str] = typer.Option(None, "--token", help=MULTI_TOKEN_HELP),
    dtype: str = typer.Option("fp32", "--dtype", help=DTYPE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print report.json on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Measure every cell of the textbook table (latent, stability, quality, speed, likelihood, size) per model."""
    from ..compare import Settings, compare, table_rows, write_report
    from ..errors import GmkitError

    output = Output(json_out, quiet)

    for name, v in (("--samples", samples), ("--slow-samples", slow_samples), ("--batch-size", batch_size),
                    ("--sweep-samples", sweep_samples), ("--likelihood-images", likelihood_images),
                    ("--train-steps", train_steps)):
        positive(name, v)
    if seeds < 0:
        raise GmkitError(f"--seeds must be >= 0, got {seeds}")
    if min(samples, slow_samples, sweep_samples) < 4:
        raise GmkitError("--samples, --slow-samples and --sweep-samples must be at least 4 (metrics need more than 3 images)")
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise GmkitError("--models: give at least one model")
    logs = {}
    for item in log:
        if "=" not in item:
            raise GmkitError(f"--log {item}: expected MODEL=PATH")
        k, v = item.split("=", 1)
        logs[k.strip()] = v.strip()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    s = Settings(data=data, extractor=extractor, samples=samples, slow_samples=slow_samples, batch_size=batch_size,
                 sweep_steps=parse_int_list("--sweep-steps", sweep_steps) if sweep_steps.strip() else [],
                 sweep_samples=sweep_samples, likelihood_images=likelihood_images, seeds=seeds,
                 train_steps=train_steps, seed_samples=min(64, samples), logs=logs, device=str(dev),
                 dtype=str(dt).replace("torch.", ""))
    report, cols = compare(names, s, say=output.message, revision=revision, token=token)
    if out is not None:
        write_report(report, cols, out)
        output.message(f"gmkit: wrote {out / 'report.json'}, {out / 'samples.png'}, plots and {out / 'index.html'} "
                       f"({report['seconds']:.0f} s)")
    output.result(report)
    heads, rows = table_rows(report)
    env = report["environment"]
    ext = report["extractor"].get("name", "none: quality n/a")
    output.table(f"gmkit compare on {data}, extractor {ext} ({env['device']}, torch {env['torch']}, gmkit {env['gmkit']})", [""] + heads,
                 [[label, *[f"[dim]{c}[/dim]" if c.startswith("n/a") else c for c in cells]] for label, cells in rows],
                 lines=True)
    output.lines([f"claim: {c['claim']}: {c['verdict']} ({c['evidence']})" for c in report.get("claims", [])]
                 + ["samples per model: " + "; ".join(f"{m['source']} {m['info'].get('samples', '-')}" for m in report["models"])
                    + f". {report['seconds']:.0f} s in all."])


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
