"""``gmkit export MODEL --format diffusers OUT/``: a model as a diffusers pipeline folder."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import REVISION_HELP, TOKEN_HELP
from .output import Output


def export_cmd(
    model: str = typer.Argument(..., help="Bundled name, checkpoint, run folder, pipeline folder or Hub repo id."),
    out: str = typer.Argument(..., help="Folder to write (must not exist, or be empty)."),
    fmt: str = typer.Option("diffusers", "--format", help="diffusers: model_index.json + one folder per component."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="The scheduler to write: ddpm, ddim or dpm++2m (default: what the model name implies)."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights written as fp32, fp16 or bf16."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", metavar="<str>", help="LoRA FILE[:SCALE] merged into the exported weights (repeatable)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Read pickled weights with torch.load(weights_only=True)."),
    revision: Optional[str] = typer.Option(None, "--revision", help=REVISION_HELP),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages."),
) -> None:
    """Write a model in another library's format (diffusers: DDPM/DDIM, LDM, Stable-Diffusion-style)."""
    import torch

    from ..errors import GmkitError
    from ..interop.export import FORMATS, SCHEDULER_OF, export_diffusers
    from ..registry import load

    if fmt not in FORMATS:
        raise GmkitError(f"--format {fmt}: unknown (known: {', '.join(FORMATS)})")
    if sampler is not None and sampler not in SCHEDULER_OF:
        raise GmkitError(f"--sampler {sampler}: diffusers schedulers exist for {', '.join(SCHEDULER_OF)}")
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise GmkitError(f"--dtype {dtype}: unknown (fp32, fp16, bf16)")
    net, src = load(model, "cpu", torch.float32, allow_pickle=allow_pickle, revision=revision, token=token, lora=lora or ())
    files = export_diffusers(net, src, out, sampler=sampler, dtype=None if dtype == "fp32" else dtypes[dtype])
    Output(json_out, quiet).result({"model": model, "format": fmt, "out": out, "files": files},
                                   f"wrote {len(files)} files to {out} (diffusers: DiffusionPipeline.from_pretrained({out!r}))")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
