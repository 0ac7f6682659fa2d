"""Self-describing safetensors checkpoints, written atomically.

A model checkpoint is one ``.safetensors`` file whose string metadata holds:
``gmkit.family`` (family name), ``gmkit.config`` (the family config as JSON), ``gmkit.version``
and ``gmkit.recipe`` (JSON: how it was trained, the exact command included). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import GmkitError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: an interrupted save leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, reading only its header."""
    return read_header(path).get("__metadata__", {}) or {}


def read_header(path: Path) -> dict:
    """A safetensors file's JSON header (tensor names, dtypes, shapes, metadata) without its data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000 or n > path.stat().st_size:
                raise ValueError("bad header length")
            return json.loads(f.read(n))
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GmkitError(f"{path}: not a valid safetensors file ({e}); is it truncated or corrupt?") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise GmkitError(f"{path}: pickled weights are refused (they can run arbitrary code); "
                         "gmkit reads .safetensors checkpoints")
    if not path.is_file():
        raise GmkitError(f"{path}: no such checkpoint file")
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise GmkitError(f"{path}: cannot read checkpoint ({e}); is it truncated or corrupt?") from None
    return tensors, meta


def save_model(path: Path, family: str, config: dict, state: dict[str, torch.Tensor], recipe: dict | None = None,
               dtype: torch.dtype | None = None, extra: dict[str, str] | None = None) -> None:
    """Write a model checkpoint; ``dtype`` (e.g. fp16 for shipped defaults) casts floating tensors."""
    from . import __version__

    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {"gmkit.family": family, "gmkit.config": json.dumps(config), "gmkit.version": __version__,
            "gmkit.recipe": json.dumps(recipe or {})}
    meta.update(extra or {})
    save_tensors(path, state, meta)
