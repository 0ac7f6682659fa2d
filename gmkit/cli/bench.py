"""``gmkit bench --models ddpm,ddim``: sampling speed (and, on request, quality) per configuration.

Sweeps models x samplers x steps x batch sizes x dtypes (x compiled/eager), e.g.
``gmkit bench --models ddpm,ddim --steps 10,20,50,100,1000 --out sweep/`` measures DDIM's claim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import DEVICE_HELP, MULTI_REVISION_HELP, MULTI_TOKEN_HELP, parse_int_list, positive, resolve_device, resolve_dtype
from .output import Output


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def bench_cmd(
    models: str = typer.Option("ddpm,ddim", "--models", help="Comma-separated model sources."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Step counts, comma-separated (default: each model's own; n/a for one-pass families)."),
    batch_size: str = typer.Option("16", "--batch-size", help="Batch sizes, comma-separated."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Samplers, comma-separated (e.g. ddpm,ddim); default: what each model name implies."),
    runs: int = typer.Option(3, "--runs", help="Timed runs per configuration (the median is reported)."),
    full: bool = typer.Option(False, "--full", help="Time complete samplings; by default runs of more than 16 network calls are "
                              "timed at 4 and 8 steps and extrapolated (said so in the output)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    revision: Optional[str] = typer.Option(None, "--revision", help=MULTI_REVISION_HELP),
    token: Optional[str] = typer.Option(None, "--token", help=MULTI_TOKEN_HELP),
    dtype: str = typer.Option("auto", "--dtype", help="Comma-separated: auto (fp32 on CPU, bf16 on GPU), fp32, fp16, bf16."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the network first."),
    compile_both: bool = typer.Option(False, "--compile-both", help="Sweep eager and compiled."),
    quality: bool = typer.Option(False, "--quality", help="Also score each configuration's samples (FD, KID, precision/recall)."),
    quality_samples: int = typer.Option(128, "-n", "--num-images", "--quality-samples", help="Images scored per configuration with --quality (seeds 0..N-1)."),
    reference: str = typer.Option("mnist", "--reference", help="Reference for quality: a bundled data set, a folder, a Hugging Face dataset (its held-out split), or a statistics file."),
    extractor: Optional[str] = typer.Option(None, "--extractor", help="Feature extractor for quality: inception (FID), dinov2, clip, mnist, or a transformers model (folder or Hub id). Default: the reference's own, else inception."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", "--output", help="Folder for results.json and plot.png (implies --quality)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Measure sampling speed: images/s, ms per step, TFLOP/s and peak memory (median of --runs after a warm-up)."""
    import platform

    import torch

    from .. import __version__
    from ..bench import CLAIM_TOLERANCE, PROBE_STEPS, QUICK_CALLS, ddim_claim, latent_vs_pixel, plot_sweep, sweep
    from ..errors import GmkitError
    from ..registry import with_revision

    output = Output(json_out, quiet)

    positive("--runs", runs)
    positive("--quality-samples", quality_samples)
    names = _names(models)
    if not names:
        raise GmkitError("--models: give at least one model")
    names = with_revision(names, revision)  # before anything loads: a revision for several repos is refused
    step_list = parse_int_list("--steps", steps) if steps else [None]
    batches = parse_int_list("--batch-size", batch_size)
    samplers = _names(sampler) if sampler else [None]
    dev = resolve_device(device)
    dtypes = [resolve_dtype(d, dev) for d in _names(dtype)]
    if not dtypes:
        raise GmkitError("--dtype: give at least one dtype")
    compiles = [False, True] if compile_both else [compile_]
    score = quality or out is not None
    if score and quality_samples < 4:
        raise GmkitError("--quality-samples must be at least 4 to score samples")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    ext = None
    if score:  # the extractor and its weights once, before any benchmark: a missing one fails here, in one line
        from ..measure import quality_extractor

        ext = quality_extractor(reference, extractor, str(dev), token=token)
    rows, skipped = sweep(names, samplers, step_list, batches, dtypes, compiles, dev, runs,
                          quality_samples if score else 0, reference, say=output.message, full=full, extractor=ext,
                          token=token)
    if not rows:
        raise GmkitError("nothing could be benched: " + "; ".join(f"{s['model']}: {s['reason']}" for s in skipped))
    env = {"torch": torch.__version__, "gmkit": __version__, "device": str(dev), "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "seeds": "image i of every batch from seed i (timed runs: 0..batch-1; quality: 0..N-1)",
           "quality_samples": quality_samples if score else None, "reference": reference if score else None,
           "extractor": ext.name if ext else None,
           "timing": f"median of {runs} run(s) after one warm-up run of min(steps, 5) steps" + (
               "" if full else f"; runs of more than {QUICK_CALLS} network calls timed at {PROBE_STEPS[0]} and "
               f"{PROBE_STEPS[1]} steps and extrapolated linearly in network calls (--full times complete runs)")}
    claim = ddim_claim(rows, CLAIM_TOLERANCE) if score else None
    result = {"results": rows, "environment": env, "skipped": skipped}
    if claim is not None:
        result["ddim_claim"] = claim
    latent = latent_vs_pixel(rows, dev, runs, say=output.message, full=full, token=token)
    if latent:
        result["latent_vs_pixel"] = latent
    if out is not None:
        import json

        from ..checkpoint import write_text

        write_text(out / "results.json", json.dumps(result, indent=2, default=str) + "\n")
        plot_sweep(rows, out / "plot.png")
        output.message(f"gmkit: wrote {out / 'results.json'} and {out / 'plot.png'}")
    output.result(result)
    cols = ["model", "sampler", "steps", "batch", "dtype", "images/s", "ms/image", "ms/step", "TFLOP/s", "peak MB", "timed"]
    if score:
        cols += [ext.fd_name, ext.kid_name, "prec", "recall", "n"]
    table = []
    for r in rows:
        t = r["timing"]
        cells = [r["model"], r["sampler"], str(r["steps"]) if r["steps_applicable"] else "n/a", str(r["batch"]),
                 r["dtype"] + (" +compile" if r["compile"] else ""), f"{r['images_per_s']:.2f}", f"{r['ms_per_image']:.1f}",
                 f"{r['ms_per_step']:.2f}", f"{r['tflops']:.4f}" if r["tflops"] is not None else "n/a",
                 f"{r['peak_memory_mb']:.0f}",
                 "full run" if t["mode"] == "full" else f"extrapolated ({'+'.join(map(str, t['probe_calls']))} calls)"]
        if score:
            q = r["quality"]
            cells += [f"{q['fd']:.3f}", f"{q['kid']:.4f}", f"{q['precision']:.2f}", f"{q['recall']:.2f}", str(q["n"])]
        table.append(cells)
    output.table(f"gmkit bench ({env['device']}, torch {env['torch']}, {env['threads']} threads"
                 + (f"; quality: {ext.name} extractor vs {reference})" if ext else ")"), cols, table,
                 right=set(cols) - {"model", "sampler", "dtype", "timed"})
    verdicts = []
    if any(r["timing"]["mode"] == "extrapolated" for r in rows):
        verdicts.append(f"extrapolated rows: timed at {PROBE_STEPS[0]} and {PROBE_STEPS[1]} steps of the same sampler "
                        "(median of --runs), seconds = overhead + network calls x per-call time; --full times complete runs")
    for lp in latent:
        verdicts.append(f"{lp['model']}: latent diffusion ({'x'.join(map(str, lp['latent']))} latent) takes "
                        f"{lp['ldm_ms_per_image']:.1f} ms/image, the same UNet on {'x'.join(map(str, lp['resolution']))} "
                        f"pixels {lp['pixel_ms_per_image']:.1f} ms/image: {lp['speedup']}x cheaper in latent space "
                        f"({lp['sampler']}, {lp['steps']} steps, batch {lp['batch']})")
    if claim is not None:
        if claim.get("status") == "reached":
            verdicts.append(f"DDIM reaches DDPM-{claim['reference']['steps']} quality ({claim['criterion']}) at "
                            f"{claim['steps']} steps: {claim['speedup']}x the images/s")
        else:
            verdicts.append(f"DDIM claim: {claim.get('status')}: {claim.get('reason')}")
    elif len(rows) > 1:
        base = rows[0]
        verdicts += [f"{r['model']} ({r['sampler']}, {r['steps']} steps) is {r['images_per_s'] / base['images_per_s']:.1f}x "
                     f"the images/s of {base['model']} ({base['sampler']}, {base['steps']} steps)" for r in rows[1:]]
    output.lines(verdicts)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
