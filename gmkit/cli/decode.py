"""``gmkit decode MODEL latents.safetensors --out recon/``: latents or codes back to images.

Reads what ``gmkit encode`` writes (VAE means, VQ-VAE code maps) and what ``gmkit quantize``
writes (codebook + indices: the vectors are looked up first), checks that the file came from
this very model, and runs the family's decoder.
"""

from __future__ import annotations

from typing import Optional

import typer

from ._common import DEVICE_HELP, REVISION_HELP, TOKEN_HELP, resolve_device
from .output import Output


def decode_cmd(
    model: str = typer.Argument(..., help="The model that encoded the latents (bundled name, file, run folder, Hub id)."),
    source: str = typer.Argument(..., help="A .safetensors file from encode or quantize, or - for stdin."),
    class_label: Optional[int] = typer.Option(None, "--class", show_default="the file's labels", help="Class label (conditional models)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Latents decoded at once."),
    out: str = typer.Option("decoded.png", "--out", "-o", "--output", help="x.png grid, folder/ one PNG each, x.safetensors raw, - PNG to stdout."),
    overwrite: bool = typer.Option(False, "--overwrite", help="--out folder/ already holds images: replace them (else refused, so two runs never mix)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    revision: Optional[str] = typer.Option(None, "--revision", help=REVISION_HELP),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Decode latents (or quantized codes) back to images."""
    import json
    from pathlib import Path

    import torch

    from ..codebooks import rebuild_tensor
    from ..errors import GmkitError
    from ..progress import note
    from ..families.base import DECODE
    from ..imageio import check_held, output_kind, save_images
    from ..outputs import check_output, clear_images
    from ..latents import check_source, model_id, read_tensor_file
    from ..model import load
    from ..options import check_run
    from .output import refuse_terminal

    check_run(batch_size=batch_size)
    if json_out and out == "-":
        raise GmkitError("--json and --out - both want stdout; write the images to a file")
    kind = output_kind(out)
    check_output(out, folder=kind == "folder", inputs=(model, source), overwrite=overwrite)
    if out == "-":
        refuse_terminal("--out -")
    tensors, meta = read_tensor_file(source, "input")
    where = "stdin" if source == "-" else source
    m = load(model, resolve_device(device), revision=revision, token=token)
    net = m.net
    if DECODE not in net.capabilities:
        raise GmkitError(f"{net.name} models have no decoder")
    check_source(meta, net.name, model_id(m.resolved.path), model, where)
    for key, value in net.latent_metadata().items():  # e.g. the codebook the codes index
        if meta.get(key) not in (None, value):
            raise GmkitError(f"{where}: its {key} differs from {model}'s; decode with the model that encoded it")
    shape = meta.get("gmkit.image_shape")
    if shape and json.loads(shape) != list(net.image_shape):
        raise GmkitError(f"{where}: latents of {shape} images, {model} makes {list(net.image_shape)}")

    if meta.get("gmkit.kind") == "codes":
        name, z = rebuild_tensor(tensors, meta, where)
    else:
        name = net.latent_key
        if name not in tensors:
            raise GmkitError(f"{where}: no {name!r} tensor for a {net.name} decoder (found: {', '.join(tensors) or 'nothing'})")
        z = tensors[name]
    labels = class_label if class_label is not None else tensors.get("label")
    if z.ndim == 0 or z.shape[0] == 0:
        raise GmkitError(f"{where}: the latents are empty (shape {tuple(z.shape)})")
    n = int(z.shape[0])
    check_held(out, n, net.image_shape)
    written = {"gmkit.model": model, "gmkit.source": where}
    if kind == "folder":  # each batch written when done: an interrupted run keeps what it made
        if overwrite and clear_images(Path(out)):
            note(f"gmkit: --overwrite: removed the images of an earlier run from {out}", quiet)
        files = []
        try:
            for s in range(0, n, batch_size):
                label = labels[s:s + batch_size] if torch.is_tensor(labels) and labels.ndim else labels
                files += save_images(m.decode_tensor(z[s:s + batch_size], label, batch_size), out, written, start_index=s)
        except KeyboardInterrupt:
            if files:
                note(f"gmkit: interrupted; the {len(files)} image(s) already written to {out} are kept")
            raise
    else:
        files = save_images(m.decode_tensor(z, labels, batch_size), out, written)
    output = Output(json_out, quiet)
    output.result({"model": model, "family": net.name, "images": n, "tensor": name,
                   "quantized": meta.get("gmkit.kind") == "codes", "out": out, "files": len(files)})
    if out != "-":
        output.message(f"gmkit: decoded {n} image(s) -> {out}")


def register(app: typer.Typer) -> None:
    app.command("decode")(decode_cmd)
