"""``gmkit decode MODEL latents.safetensors --out recon/``: latents or codes back to images.

Reads what ``gmkit encode`` writes (VAE means, VQ-VAE code maps) and what ``gmkit quantize``
writes (codebook + indices: the vectors are looked up first), checks that the file came from
this very model, and runs the family's decoder.
"""

from __future__ import annotations

from typing import Optional

import typer

from ._common import DEVICE_HELP, emit_json, positive, resolve_device, say


def decode_cmd(
    model: str = typer.Argument(..., help="The model that encoded the latents (bundled name, file, run folder, Hub id)."),
    source: str = typer.Argument(..., help="A .safetensors file from encode or quantize, or - for stdin."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Class label (conditional models; default: the file's labels)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Latents decoded at once."),
    out: str = typer.Option("decoded.png", "--out", "-o", help="x.png grid, folder/ one PNG each, x.safetensors raw, - PNG to stdout."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Decode latents (or quantized codes) back to images."""
    import json

    import torch

    from ..errors import GmkitError
    from ..families.base import DECODE
    from ..imageio import check_writable, save_images
    from ..latents import check_source, model_id, read_tensor_file
    from ..quantize import dequantize
    from ..registry import load

    positive("--batch-size", batch_size)
    if json_out and out == "-":
        raise GmkitError("--json and --out - both want stdout; write the images to a file")
    check_writable(out)
    tensors, meta = read_tensor_file(source, "input")
    where = "stdin" if source == "-" else source
    dev = resolve_device(device)
    net, src = load(model, dev)
    if DECODE not in net.capabilities:
        raise GmkitError(f"{net.name} models have no decoder")
    check_source(meta, net.name, model_id(src.path), model, where)
    if meta.get("gmkit.codebook_id") and hasattr(net, "codebook_id") and meta["gmkit.codebook_id"] != net.codebook_id():
        raise GmkitError(f"{where}: its codes index another codebook than {model}'s; decode with the model that encoded them")
    shape = meta.get("gmkit.image_shape")
    if shape and json.loads(shape) != list(net.image_shape):
        raise GmkitError(f"{where}: latents of {shape} images, {model} makes {list(net.image_shape)}")

    if meta.get("gmkit.kind") == "codes":
        name, z = dequantize(tensors, meta, where)
    else:
        name = getattr(net, "latent_key", None)
        if name not in tensors:
            raise GmkitError(f"{where}: no {name!r} tensor for a {net.name} decoder (found: {', '.join(tensors) or 'nothing'})")
        z = tensors[name]
    if z.ndim == 0 or z.shape[0] == 0:
        raise GmkitError(f"{where}: the {name} tensor is empty (shape {tuple(z.shape)})")
    labels = None
    if class_label is not None:
        labels = class_label
    elif "label" in tensors:
        labels = tensors["label"]
        if labels.shape[0] != z.shape[0]:
            raise GmkitError(f"{where}: {labels.shape[0]} labels for {z.shape[0]} latents")
    opts = {"class_label": labels} if labels is not None else {}
    chunks = []
    for s in range(0, z.shape[0], batch_size):
        part = {k: (v[s:s + batch_size] if torch.is_tensor(v) and v.ndim else v) for k, v in opts.items()}
        chunks.append(net.decode(z[s:s + batch_size], **part).cpu())
    x = torch.cat(chunks)
    files = save_images(x, out, {"gmkit.model": model, "gmkit.source": where})
    if json_out:
        emit_json({"model": model, "family": net.name, "images": int(x.shape[0]), "tensor": name,
                   "quantized": meta.get("gmkit.kind") == "codes", "out": out, "files": len(files)})
    elif out != "-":
        say(f"gmkit: decoded {x.shape[0]} image(s) -> {out}", quiet)


def register(app: typer.Typer) -> None:
    app.command("decode")(decode_cmd)
