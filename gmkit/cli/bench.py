"""``gmkit bench --models ddpm,ddim``: sampling speed per model, sampler, steps and batch size."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import DEVICE_HELP, DTYPE_HELP, emit_json, parse_int_list, positive, resolve_device, resolve_dtype, say


def bench_cmd(
    models: str = typer.Option("ddpm,ddim", "--models", help="Comma-separated model sources."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Step counts, comma-separated (default: each model's own)."),
    batch_size: str = typer.Option("16", "--batch-size", help="Batch sizes, comma-separated."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Force one sampler for every model."),
    runs: int = typer.Option(3, "--runs", help="Timed runs per configuration (the median is reported)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the network first."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Measure sampling speed: images/s, ms per step and peak memory (median of --runs after a warm-up)."""
    import platform

    import torch

    from ..bench import bench_one
    from ..errors import GmkitError

    positive("--runs", runs)
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise GmkitError("--models: give at least one model")
    step_list = parse_int_list("--steps", steps) if steps else [None]
    batches = parse_int_list("--batch-size", batch_size)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    rows = []
    for name in names:
        for s in step_list:
            for b in batches:
                say(f"gmkit: bench {name} steps={s or 'default'} batch={b} ...", quiet or json_out)
                rows.append(bench_one(name, s, b, dev, dt, runs, sampler, compile_).as_dict())
    env = {"torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}
    if json_out:
        emit_json({"results": rows, "environment": env})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gmkit bench ({env['device']}, torch {env['torch']}, {env['threads']} threads)")
    for col in ("model", "sampler", "steps", "batch", "device", "images/s", "ms/step", "s/batch", "peak MB"):
        table.add_column(col, justify="right" if col not in ("model", "sampler", "device") else "left")
    for r in rows:
        table.add_row(r["model"], r["sampler"], str(r["steps"]), str(r["batch"]), r["device"], f"{r['images_per_s']:.2f}",
                      f"{r['ms_per_step']:.2f}", f"{r['seconds_per_batch']:.3f}", f"{r['peak_memory_mb']:.0f}")
    Console().print(table)
    if len(rows) > 1:
        base = rows[0]
        for r in rows[1:]:
            say(f"gmkit: {r['model']} ({r['sampler']}, {r['steps']} steps) is "
                f"{r['images_per_s'] / base['images_per_s']:.1f}x the images/s of {base['model']} "
                f"({base['sampler']}, {base['steps']} steps)", quiet)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
