"""Tensor files that travel between ``encode``, ``quantize`` and ``decode`` (safetensors, or ``-``).

Every such file names where its numbers came from in its metadata:
    gmkit.kind         latents (encode) | codes (quantize)
    gmkit.family       the model family that encoded it
    gmkit.model        the model source as the user gave it
    gmkit.model_id     a fingerprint of the checkpoint file, so decode refuses another model's latents
    gmkit.image_shape  [C, H, W] of the images
so ``encode | quantize | decode`` chains without extra flags.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from .errors import GmkitError


def model_id(path: Path) -> str:
    """A short fingerprint of a checkpoint file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_tensor_file(path: str, what: str = "input", max_bytes: int | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file, or ``-`` for a safetensors stream on stdin; ``max_bytes`` refuses larger tensor
    data in one line before reading it (from the header of a file; while reading stdin)."""
    from safetensors.torch import load

    from .checkpoint import load_tensors, read_header

    def too_big(size: int, more: str = "") -> GmkitError:
        return GmkitError(f"{what} {path}: {more}{size / 2**20:,.0f} MiB of tensors is over this command's limit of "
                          f"{max_bytes / 2**20:,.0f} MiB (it holds them in memory); split or subsample the file")

    if path == "-":
        if sys.stdin.isatty():
            raise GmkitError(f"{what} -: stdin is a terminal; pipe a .safetensors stream in (e.g. gmkit encode ... | )")
        data = sys.stdin.buffer.read(-1 if max_bytes is None else max_bytes + (100 << 20) + 1)
        if max_bytes is not None and len(data) > max_bytes + (100 << 20):
            raise too_big(len(data), "over ")
        if not data:
            raise GmkitError(f"{what} -: stdin is empty (did the command before the pipe fail?)")
        try:
            tensors = load(data)
            n = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8:8 + n]).get("__metadata__", {}) or {}
        except Exception as e:  # safetensors raises several types for bad bytes
            raise GmkitError(f"{what} -: stdin is not a safetensors stream ({e})") from None
        return tensors, meta
    p = Path(path)
    if not p.is_file():
        raise GmkitError(f"{path}: no such file")
    if max_bytes is not None:
        size = max((int(v["data_offsets"][1]) for k, v in read_header(p).items()
                    if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
        if size > max_bytes:
            raise too_big(size)
    return load_tensors(p)


def write_tensor_file(out: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write atomically to a file, or to stdout for ``-``."""
    from safetensors.torch import save

    from .checkpoint import save_tensors

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if out == "-":
        sys.stdout.buffer.write(save(tensors, metadata=meta))
        sys.stdout.buffer.flush()
    else:
        save_tensors(Path(out), tensors, meta)


def check_out(out: str, what: str = "--out", inputs=()) -> None:
    """Refuse outputs that are not .safetensors or ``-``, binary data on a terminal, and model files or
    the command's own inputs as the output."""
    from .outputs import check_output

    if out == "-":
        if sys.stdout.isatty():
            raise GmkitError(f"{what} -: stdout is a terminal; redirect it (> file.safetensors) or give {what} FILE.safetensors")
        return
    if not out.endswith(".safetensors"):
        raise GmkitError(f"{what} {out}: this command writes .safetensors (or - for stdout)")
    check_output(out, inputs=inputs)


def source_meta(meta: dict[str, str]) -> dict[str, str]:
    """The provenance entries of a latent file that a derived file must carry on."""
    keep = ("gmkit.family", "gmkit.model", "gmkit.model_id", "gmkit.image_shape", "gmkit.options",
            "gmkit.codebook_id", "gmkit.num_codes")
    return {k: meta[k] for k in keep if k in meta}


def check_source(meta: dict[str, str], family: str, fingerprint: str, model: str, where: str) -> None:
    """Refuse latents that another family or another checkpoint produced."""
    fam = meta.get("gmkit.family")
    if fam is None:
        raise GmkitError(f"{where}: no gmkit.family in its metadata; decode reads files written by gmkit encode or quantize")
    if fam != family:
        raise GmkitError(f"{where}: holds {fam} latents (from {meta.get('gmkit.model', '?')}); "
                         f"{model} is a model of the {family} family. Decode with the model that encoded them")
    mid = meta.get("gmkit.model_id")
    if mid and mid != fingerprint:
        raise GmkitError(f"{where}: was encoded by another {family} checkpoint ({meta.get('gmkit.model', '?')}, "
                         f"id {mid}), not {model} (id {fingerprint}); decode with the model that encoded it")
