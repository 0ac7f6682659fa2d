"""Vector quantization of tensor files: fit a codebook by k-means, map vectors to codes, and back.

What counts as a vector:
    (N, D)                 N vectors of dimension D (e.g. VAE latents)
    (N, C, H, W)           N*H*W vectors of dimension C (a spatial latent map)
    (N, C, H, W), patch P  N*(H/P)*(W/P) non-overlapping P x P patches of dimension C*P*P (images)

With ``levels`` L > 1 this is residual quantization: level l quantizes what levels < l left over,
and a vector is the sum of its L codes (Juang & Gray 1982; as in RQ-VAE, Lee et al. 2022).

A quantized file (``gmkit.kind = codes``) holds ``codebook`` (L, K, D) float32 and ``indices``
shaped like the vectors' layout with a trailing L axis, plus the source file's provenance, so
``decode`` rebuilds the latent tensor and hands it to the model that made it. The k-means and
nearest-code search are those of the VQ-VAE quantizer (gmkit.nn.quantizer).
"""

from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F

from .errors import GmkitError
from .latents import source_meta
from .nn.quantizer import kmeans, nearest


def pick_tensor(tensors: dict[str, torch.Tensor], key: str | None, where: str) -> str:
    """Which tensor of a file holds the vectors: ``key``, else ``mean`` (VAE latents), else the only float one."""
    if key is not None:
        if key not in tensors:
            raise GmkitError(f"{where}: no tensor named {key!r} (found: {', '.join(tensors) or 'none'})")
        return key
    if "mean" in tensors:
        return "mean"
    floats = [k for k, v in tensors.items() if v.is_floating_point()]
    if len(floats) == 1:
        return floats[0]
    if not floats:
        found = ", ".join(f"{k} {str(v.dtype).replace('torch.', '')}" for k, v in tensors.items()) or "nothing"
        raise GmkitError(f"{where}: holds no floating-point vectors to quantize (found: {found}); "
                         "integer code maps are already quantized")
    raise GmkitError(f"{where}: holds several tensors ({', '.join(floats)}); pick one with --key")


def to_vectors(t: torch.Tensor, patch: int | None, where: str) -> tuple[torch.Tensor, dict]:
    """A tensor -> (vectors (M, D) float32, layout to undo it)."""
    if not t.is_floating_point():
        raise GmkitError(f"{where}: the tensor is {str(t.dtype).replace('torch.', '')}; quantize needs floating-point vectors")
    if t.numel() == 0:
        raise GmkitError(f"{where}: the tensor is empty (shape {tuple(t.shape)})")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise GmkitError(f"{where}: holds {bad} NaN or infinite value(s); fix or drop them before quantizing")
    shape = list(t.shape)
    if patch is not None:
        if t.ndim != 4:
            raise GmkitError(f"{where}: --patch needs images (N, C, H, W), got shape {tuple(shape)}")
        n, c, h, w = shape
        if patch < 1 or h % patch or w % patch:
            raise GmkitError(f"--patch {patch}: must divide the image size {h}x{w}")
        cols = F.unfold(t, patch, stride=patch)  # (N, C*P*P, L)
        v = cols.transpose(1, 2).reshape(-1, c * patch * patch)
        return v, {"layout": "patches", "shape": shape, "patch": patch, "grid": [n, h // patch, w // patch]}
    if t.ndim == 2:
        return t, {"layout": "vectors", "shape": shape, "grid": [shape[0]]}
    if t.ndim == 4:
        n, c, h, w = shape
        return t.permute(0, 2, 3, 1).reshape(-1, c), {"layout": "channels", "shape": shape, "grid": [n, h, w]}
    raise GmkitError(f"{where}: expected (N, D) vectors or an (N, C, H, W) map, got shape {tuple(shape)}")


def from_vectors(v: torch.Tensor, layout: dict) -> torch.Tensor:
    """Undo ``to_vectors``."""
    shape = layout["shape"]
    if layout["layout"] == "vectors":
        return v.view(*shape)
    n, c, h, w = shape
    if layout["layout"] == "channels":
        return v.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
    p = layout["patch"]
    cols = v.view(n, -1, c * p * p).transpose(1, 2)
    return F.fold(cols, (h, w), p, stride=p)


def fit(vectors: torch.Tensor, num_codes: int, levels: int = 1, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Codebooks (L, K, D) by k-means++ and Lloyd iterations, level by level on the residuals."""
    m = vectors.shape[0]
    if num_codes < 1 or levels < 1:
        raise GmkitError("--codebook and --levels must be positive")
    if m < num_codes:
        raise GmkitError(f"--codebook {num_codes}: needs at least {num_codes} vectors, the input has {m}")
    g = torch.Generator().manual_seed(seed)
    residual = vectors.float().clone()
    books = []
    for _ in range(levels):
        c, idx = kmeans(residual, num_codes, iters, generator=g)
        books.append(c)
        residual -= c[idx]
    return torch.stack(books)


def assign(vectors: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (M, L), reconstruction (M, D)): greedy nearest code per level on the residual."""
    residual = vectors.float().clone()
    recon = torch.zeros_like(residual)
    idx = []
    for c in codebooks.float():
        i, _ = nearest(residual, c)
        q = c[i]
        recon += q
        residual -= q
        idx.append(i)
    return torch.stack(idx, 1), recon


def lookup(indices: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """indices (M, L) -> vectors (M, D): the sum over levels of each level's code."""
    return sum(codebooks[lvl].float()[indices[:, lvl]] for lvl in range(codebooks.shape[0]))


def stats(vectors: torch.Tensor, recon: torch.Tensor, indices: torch.Tensor, num_codes: int, images: bool) -> dict:
    mse = float((vectors - recon).pow(2).mean())
    levels = indices.shape[1]
    used, entropy = [], 0.0
    for lvl in range(levels):
        counts = torch.bincount(indices[:, lvl], minlength=num_codes).double()
        used.append(int((counts > 0).sum()))
        p = counts[counts > 0] / counts.sum()
        entropy += float(-(p * p.log2()).sum())
    signal = float(vectors.pow(2).mean())
    return {"vectors": int(vectors.shape[0]), "dim": int(vectors.shape[1]), "codes": num_codes, "levels": levels,
            "mse": mse,
            # Images live in [-1, 1]: peak-to-peak 2, so PSNR = 10 log10(2^2 / MSE).
            "psnr_db": (10 * math.log10(4 / mse) if mse > 0 else float("inf")) if images else None,
            "relative_mse": mse / signal if signal > 0 else None,
            "usage": sum(used) / (num_codes * levels), "codes_used": used,
            "bits_per_vector": levels * math.log2(num_codes), "entropy_bits_per_vector": entropy}


def read_codebook(tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str) -> torch.Tensor:
    if "codebook" not in tensors:
        raise GmkitError(f"{where}: holds no codebook (found: {', '.join(tensors) or 'nothing'}); "
                         "make one with gmkit quantize FILE --codebook K --out cb.safetensors")
    cb = tensors["codebook"]
    if cb.ndim == 2:
        cb = cb[None]
    if cb.ndim != 3 or cb.shape[1] == 0 or not cb.is_floating_point():
        raise GmkitError(f"{where}: codebook has shape {tuple(cb.shape)}; expected (levels, codes, dim)")
    if not bool(torch.isfinite(cb).all()):
        raise GmkitError(f"{where}: the codebook holds NaN or infinite values")
    return cb.float()


def quantize_file(tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str, *, num_codes: int | None = None,
                  codebook: torch.Tensor | None = None, levels: int = 1, iters: int = 20, seed: int = 0,
                  patch: int | None = None, key: str | None = None) -> tuple[dict, dict, dict]:
    """Fit (``num_codes``) or apply (``codebook``) -> (tensors, metadata, report) of the codes file."""
    if meta.get("gmkit.kind") == "codes":
        raise GmkitError(f"{where}: is already quantized (gmkit.kind = codes); quantize the original latents")
    name = pick_tensor(tensors, key, where)
    vectors, layout = to_vectors(tensors[name], patch, f"{where} [{name}]")
    t0 = time.perf_counter()
    if codebook is None:
        codebook = fit(vectors, num_codes, levels, iters, seed)
    elif codebook.shape[2] != vectors.shape[1]:
        raise GmkitError(f"--apply: the codebook holds vectors of dimension {codebook.shape[2]}, "
                         f"{where} [{name}] has dimension {vectors.shape[1]}{' (with --patch)' if patch else ''}")
    fitted = time.perf_counter()
    indices, recon = assign(vectors, codebook)
    report = stats(vectors, recon, indices, codebook.shape[1], images=patch is not None or name == "images")
    report.update({"tensor": name, "fit_seconds": round(fitted - t0, 3),
                   "seconds": round(time.perf_counter() - t0, 3)})
    idx = indices.view(*layout["grid"], codebook.shape[0])
    small = codebook.shape[1] <= 2 ** 15
    out = {"codebook": codebook.contiguous(), "indices": idx.to(torch.int16 if small else torch.int64)}
    # Integer side information (class labels of a conditional model) travels along for decode.
    out.update({k: v for k, v in tensors.items() if k != name and not v.is_floating_point() and k not in out})
    qmeta = {**source_meta(meta), "gmkit.kind": "codes",
             "gmkit.quantize": json.dumps({"key": name, **layout, "levels": int(codebook.shape[0]),
                                           "num_codes": int(codebook.shape[1]), "dim": int(codebook.shape[2]),
                                           "seed": seed, "mse": report["mse"]})}
    return out, qmeta, report


def rebuild_tensor(tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str) -> tuple[str, torch.Tensor]:
    """A codes file -> (tensor name, the rebuilt tensor) as the source file held it."""
    try:
        q = json.loads(meta["gmkit.quantize"])
    except (KeyError, json.JSONDecodeError):
        raise GmkitError(f"{where}: not a gmkit quantize output (no valid gmkit.quantize metadata)") from None
    cb = read_codebook(tensors, meta, where)
    if "indices" not in tensors:
        raise GmkitError(f"{where}: holds no indices")
    idx = tensors["indices"].long()
    levels = cb.shape[0]
    if idx.shape[-1] != levels or list(idx.shape[:-1]) != list(q["grid"]):
        raise GmkitError(f"{where}: indices of shape {tuple(idx.shape)} do not fit its layout {q['grid']} x {levels} levels")
    flat = idx.reshape(-1, levels)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= cb.shape[1]):
        raise GmkitError(f"{where}: indices outside the codebook's 0..{cb.shape[1] - 1}")
    if q["layout"] == "patches":
        raise GmkitError(f"{where}: holds quantized image patches, not model latents; there is no decoder for them")
    return q["key"], from_vectors(lookup(flat, cb), q)
