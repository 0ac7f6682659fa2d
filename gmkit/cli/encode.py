"""``gmkit encode MODEL INPUTS... --out latents.safetensors``: images to a model's latent space.

Diffusion models encode by DDIM inversion (the noise that deterministic DDIM maps back to the
image); autoencoders and flows by their encoder. The output is a safetensors file whose metadata
names the model, family and image shape, so ``decode`` / ``sample --init`` can read it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._common import DEVICE_HELP, REVISION_HELP, TOKEN_HELP, resolve_device
from .output import Output


def gather_images(inputs: list[str], channels: int, size: int, meta: dict | None = None, quiet: bool = False):
    """Image files, folders of them (sorted, recursive) or ``-`` (one image on stdin) as (N, C, H, W);
    resizing and images far from the model's training data (``meta``: its checkpoint's) said once."""
    import torch

    from ..data.core import list_images
    from ..errors import GmkitError
    from ..imageio import data_stats, distance_note, pil_tensor, read_image
    from ..progress import note

    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if item == "-":
            paths.append("-")
        elif p.is_dir():
            found = [str(f) for f in list_images(p)]
            if not found:
                raise GmkitError(f"{item}: no images in this folder")
            paths += found
        elif p.is_file():
            paths.append(item)
        else:
            raise GmkitError(f"{item}: no such file or folder")
    if not paths:
        raise GmkitError("no input images given")
    stats, xs, resized, far, cropped = data_stats(meta), [], [], [], False
    for path in paths:
        im = read_image(path)
        if im.size != (size, size):
            resized.append(f"{path} ({im.width}x{im.height})")
            cropped = cropped or im.width != im.height
        far += [text for text in [distance_note(path, im, channels, (size, size), stats)] if text]
        xs.append(pil_tensor(im, channels, size))
    if resized:
        note(f"gmkit: {resized[0] if len(resized) == 1 else f'{len(resized)} images, e.g. {resized[0]},'} "
             f"{'centre-cropped and ' if cropped else ''}resized to {size}x{size} for this model", quiet)
    if far:
        note(f"gmkit: {far[0]}" + (f" (and {len(far) - 1} more such images)" if len(far) > 1 else ""), quiet)
    return torch.cat(xs), paths


def encode_cmd(
    model: str = typer.Argument(..., help="Model source (bundled name, file, run folder, Hub id)."),
    inputs: list[str] = typer.Argument(..., help="Image files or folders, or - for one image on stdin."),
    steps: Optional[int] = typer.Option(None, "--steps", "--num-inference-steps", show_default="50", help="Inversion steps (diffusion and score models)."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Class label (class-conditional models)."),
    refine: Optional[int] = typer.Option(None, "--refine", show_default="2", help="DDIM inversion: fixed-point iterations per step (0 = plain)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", show_default="ddim (inversion) for ddpm, ode for score", help="Diffusion/score models: ddim or ode "
                                          "(probability-flow ODE latent; decode with sample --init Z --sampler heun)."),
    out: str = typer.Option("-", "--out", "-o", "--output", help="A .safetensors file, or - for stdout (to pipe into quantize/decode; never a terminal)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    revision: Optional[str] = typer.Option(None, "--revision", help=REVISION_HELP),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report (needs --out FILE)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Encode images to latents (DDIM inversion for diffusion models)."""
    from safetensors.torch import save

    from ..checkpoint import save_tensors
    from ..errors import GmkitError
    from ..latents import model_id
    from ..outputs import check_output
    from ..model import load
    from ..options import EncodeOptions
    from .output import refuse_terminal

    opts = EncodeOptions(steps=steps, class_label=class_label, refine=refine, sampler=sampler).check()
    if out != "-" and not out.endswith(".safetensors"):
        raise GmkitError(f"--out {out}: encode writes .safetensors (or - for stdout)")
    if json_out and out == "-":
        raise GmkitError("--json and --out - both want stdout; give --out FILE.safetensors")
    check_output(out, inputs=(model, *inputs))
    if out == "-":
        refuse_terminal("--out -")
    m = load(model, resolve_device(device), revision=revision, token=token)
    c, h, _ = m.image_shape
    x, paths = gather_images(inputs, c, h, m.resolved.meta, quiet)
    latents = m.encode(x, **opts.as_kwargs())  # codes and labels stay integers
    meta = {"gmkit.kind": "latents", "gmkit.model": model, "gmkit.family": m.family,
            "gmkit.image_shape": json.dumps(list(m.image_shape)), "gmkit.options": json.dumps(opts.as_kwargs()),
            "gmkit.inputs": json.dumps(paths[:1000]), "gmkit.model_id": model_id(m.resolved.path),  # decode refuses others'
            **m.net.latent_metadata()}  # e.g. the VQ-VAE's codebook id
    output = Output(json_out, quiet)
    if out == "-":
        output.binary(save(latents, metadata=meta))
    else:
        save_tensors(Path(out), latents, meta)
    shapes = {k: list(v.shape) for k, v in latents.items()}
    output.result({"model": model, "family": m.family, "images": len(paths), "tensors": shapes, "out": out})
    if out != "-":
        output.message(f"gmkit: encoded {len(paths)} image(s) -> {out} {shapes}")


def register(app: typer.Typer) -> None:
    app.command("encode")(encode_cmd)
