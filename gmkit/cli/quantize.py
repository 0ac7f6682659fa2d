"""``gmkit quantize FILE --codebook K`` / ``--apply cb.safetensors``: vector-quantize a tensor file.

Fits a codebook by k-means (k-means++ seeding, ``--seed`` deterministic) or maps vectors to the
codes of an existing one, and writes a codes file (codebook + indices + the source's provenance)
that ``gmkit decode`` understands. Reports MSE, PSNR (image patches), codebook usage and bits
per vector on stderr, or as JSON with ``--json``.
"""

from __future__ import annotations

from typing import Optional

import typer

from ._common import positive
from .output import Output

# quantize holds its vectors in memory, with about four working copies (k-means residuals, assignment,
# reconstruction): a 256 MiB input peaked at 1.4 GB RSS (README "Errors and safety"). Inputs beyond this
# are refused in one line rather than exhausting memory.
MAX_INPUT_BYTES = 512 << 20


def quantize_cmd(
    source: str = typer.Argument(..., help="A .safetensors tensor file (encode's output, images, any (N, D) or (N, C, H, W) tensor), or - for stdin."),
    codebook: Optional[int] = typer.Option(None, "--codebook", "-k", help="Fit a codebook of this many codes by k-means."),
    apply: Optional[str] = typer.Option(None, "--apply", help="Map vectors to the codes of this codebook file (a quantize output)."),
    levels: int = typer.Option(1, "--levels", help="Residual quantization levels (each quantizes the previous levels' error)."),
    patch: Optional[int] = typer.Option(None, "--patch", help="Quantize non-overlapping P x P patches of (N, C, H, W) images."),
    key: Optional[str] = typer.Option(None, "--key", help="Which tensor of the file (default: mean, else its only float tensor)."),
    iters: int = typer.Option(20, "--iters", help="k-means (Lloyd) iterations at most."),
    seed: int = typer.Option(0, "--seed", help="Seed for k-means++ seeding: same seed, same codebook."),
    out: str = typer.Option("-", "--out", "-o", "--output", help="Codes file (.safetensors), or - for stdout (never a terminal)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout (needs --out FILE)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fit a codebook to vectors by k-means, or map vectors to an existing codebook."""
    from ..errors import GmkitError
    from ..latents import check_out

    if (codebook is None) == (apply is None):
        raise GmkitError("give exactly one of --codebook K (fit a codebook) or --apply cb.safetensors (use one)")
    positive("--codebook", codebook)
    positive("--levels", levels)
    positive("--patch", patch)
    positive("--iters", iters)
    if seed < 0:
        raise GmkitError(f"--seed must be >= 0, got {seed}")
    if apply is not None and levels != 1:
        raise GmkitError("--levels applies when fitting; an applied codebook brings its own levels")
    if json_out and out == "-":
        raise GmkitError("--json and --out - both want stdout; give --out FILE.safetensors")
    if apply is not None and apply == "-" and source == "-":
        raise GmkitError("the input and --apply cannot both be stdin")
    check_out(out, inputs=(source, apply))

    import torch

    with torch.no_grad():
        report = _run(source, apply, codebook, levels, iters, seed, patch, key, out)
    psnr = f", PSNR {report['psnr_db']:.2f} dB" if report["psnr_db"] is not None else ""
    line = (f"{report['vectors']} vectors of dim {report['dim']} -> {report['levels']} x {report['codes']} codes: "
            f"MSE {report['mse']:.5g}{psnr}, usage {100 * report['usage']:.1f}%, "
            f"{report['bits_per_vector']:.2f} bits/vector (entropy {report['entropy_bits_per_vector']:.2f}), "
            f"{report['seconds']:.2f} s -> {out}")
    output = Output(json_out, quiet)
    if out == "-":  # stdout carries the codes: the report goes with the messages
        output.message(f"gmkit: {line}")
    else:
        output.result(report, line)


def _run(source, apply, codebook, levels, iters, seed, patch, key, out) -> dict:
    from ..latents import read_tensor_file, write_tensor_file
    from ..codebooks import quantize_file, read_codebook

    cb = None
    if apply is not None:
        cb_tensors, cb_meta = read_tensor_file(apply, "--apply")
        cb = read_codebook(cb_tensors, cb_meta, f"--apply {apply}")
    tensors, meta = read_tensor_file(source, "input", max_bytes=MAX_INPUT_BYTES)
    where = "stdin" if source == "-" else source
    result, qmeta, report = quantize_file(tensors, meta, where, num_codes=codebook, codebook=cb, levels=levels,
                                          iters=iters, seed=seed, patch=patch, key=key)
    write_tensor_file(out, result, qmeta)
    report["out"] = out
    return report


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
