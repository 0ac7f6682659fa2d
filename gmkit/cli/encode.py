"""``gmkit encode MODEL INPUTS... --out latents.safetensors``: images to a model's latent space.

Diffusion models encode by DDIM inversion (the noise that deterministic DDIM maps back to the
image); autoencoders and flows by their encoder. The output is a safetensors file whose metadata
names the model, family and image shape, so ``decode`` / ``sample --init`` can read it back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import DEVICE_HELP, emit_json, positive, resolve_device, say


def gather_images(inputs: list[str], channels: int, size: int):
    """Image files, folders of them (sorted, recursive) or ``-`` (one image on stdin) as (N, C, H, W)."""
    import torch

    from ..data.core import list_images
    from ..errors import GmkitError
    from ..imageio import load_image_file

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
    return torch.cat([load_image_file(p, channels, size) for p in paths]), paths


def encode_cmd(
    model: str = typer.Argument(..., help="Model source (bundled name, file, run folder, Hub id)."),
    inputs: list[str] = typer.Argument(..., help="Image files or folders, or - for one image on stdin."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Inversion steps (diffusion models; default 50)."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Class label (class-conditional models)."),
    refine: Optional[int] = typer.Option(None, "--refine", help="DDIM inversion: fixed-point iterations per step (default 2; 0 = plain)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Diffusion/score models: ddim (inversion, ddpm's default) or ode "
                                          "(probability-flow ODE latent; decode with sample --init Z --sampler heun)."),
    out: str = typer.Option("-", "--out", "-o", help="A .safetensors file, or - for stdout (to pipe into quantize/decode)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report (needs --out FILE)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Encode images to latents (DDIM inversion for diffusion models)."""
    from safetensors.torch import save

    from ..checkpoint import save_tensors
    from ..errors import GmkitError
    from ..families.base import ENCODE
    from ..imageio import check_writable
    from ..registry import load

    positive("--steps", steps)
    if out != "-" and not out.endswith(".safetensors"):
        raise GmkitError(f"--out {out}: encode writes .safetensors (or - for stdout)")
    if json_out and out == "-":
        raise GmkitError("--json and --out - both want stdout; give --out FILE.safetensors")
    check_writable(out)
    dev = resolve_device(device)
    net, src = load(model, dev)
    if ENCODE not in net.capabilities:
        raise GmkitError(f"{net.name} models cannot encode images")
    c, h, _ = net.image_shape
    x, paths = gather_images(inputs, c, h)
    if refine is not None and refine < 0:
        raise GmkitError(f"--refine must be >= 0, got {refine}")
    opts = {k: v for k, v in {"steps": steps, "class_label": class_label, "refine": refine, "sampler": sampler}.items() if v is not None}
    latents = net.encode(x.to(dev), **opts)
    latents = {k: (v.float() if v.is_floating_point() else v).cpu().contiguous() for k, v in latents.items()}  # codes, labels stay integers
    meta = {"gmkit.kind": "latents", "gmkit.model": model, "gmkit.family": net.name,
            "gmkit.image_shape": json.dumps(list(net.image_shape)), "gmkit.options": json.dumps(opts),
            "gmkit.inputs": json.dumps(paths[:1000])}
    from ..latents import model_id

    meta["gmkit.model_id"] = model_id(src.path)  # decode refuses latents from another checkpoint
    if hasattr(net, "latent_metadata"):  # e.g. the VQ-VAE's codebook id
        meta.update(net.latent_metadata())
    if out == "-":
        sys.stdout.buffer.write(save(latents, metadata=meta))
        sys.stdout.buffer.flush()
    else:
        save_tensors(Path(out), latents, meta)
    shapes = {k: list(v.shape) for k, v in latents.items()}
    if json_out:
        emit_json({"model": model, "family": net.name, "images": len(paths), "tensors": shapes, "out": out})
    else:
        say(f"gmkit: encoded {len(paths)} image(s) -> {out} {shapes}", quiet or out == "-")


def register(app: typer.Typer) -> None:
    app.command("encode")(encode_cmd)
