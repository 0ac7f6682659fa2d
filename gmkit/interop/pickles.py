"""Pickled weights (``.bin``, ``.ckpt``): refused by default, read with ``weights_only=True`` on request.

Unpickling a file can run any code its author put in it, so gmkit never unpickles fully. With
``--allow-pickle`` a file is read by ``torch.load(weights_only=True)`` (which only rebuilds
tensors, containers and plain values) and converted once to safetensors in gmkit's cache; later
runs read the converted file and never touch the pickle again.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch

from ..checkpoint import atomic_write, save_tensors
from ..errors import GmkitError

PICKLE_HELP = ("pickled weights can run arbitrary code when loaded, so gmkit refuses them; "
               "use a revision or repo with .safetensors files, or pass --allow-pickle to read them with "
               "torch.load(weights_only=True) and convert them once to safetensors")


def converted_dir() -> Path:
    from ..data.core import cache_dir

    return cache_dir() / "converted"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, mtime) so a large pickle is hashed once."""
    index_file = converted_dir() / "index.json"
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        index[key] = _sha256(path)
        index_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(index_file, lambda tmp: Path(tmp).write_text(json.dumps(index)))
    return index[key]


def _why(e: Exception) -> str:
    """The useful part of torch's long weights-only error: which global it would not rebuild."""
    text = str(e)
    m = re.search(r"Unsupported (?:global|operand)[^\n.]*", text)
    return m.group(0).strip() if m else text.strip().splitlines()[0][:200]


def converted(path: Path, allow: bool, label: str | None = None) -> Path:
    """The safetensors twin of a pickled state dict in gmkit's cache, converting it on first use."""
    path = Path(path)
    label = label or str(path)
    if not allow:
        raise GmkitError(f"{label}: holds only pickled weights ({path.name}); {PICKLE_HELP}")
    if not path.is_file():
        raise GmkitError(f"{label}: no such file {path}")
    digest = _digest(path)
    target = converted_dir() / f"{digest[:32]}.safetensors"
    if target.is_file():
        return target
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        raise GmkitError(f"{label}: torch.load(weights_only=True) refused {path.name} ({_why(e)}): it holds more "
                         "than tensors, and gmkit never unpickles fully; get a .safetensors version of these weights") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise GmkitError(f"{label}: cannot read {path.name} as a PyTorch weights file ({str(e).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # Lightning-style .ckpt
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise GmkitError(f"{label}: {path.name} holds a {type(obj).__name__}, not a dictionary of tensors")
    state = {str(k): v.detach().clone().contiguous() for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise GmkitError(f"{label}: {path.name} holds no tensors")
    save_tensors(target, state, {"gmkit.converted_from": path.name, "gmkit.sha256": digest})
    return target
