"""Which weights file(s) of a component to read, and reading them lazily.

A component folder (``unet/``, or the repo root in flat repos) may hold its weights as
``diffusion_pytorch_model.safetensors`` (diffusers) or ``model.safetensors`` (transformers), an
``fp16`` variant of either (``*.fp16.safetensors``), shards listed by an index
(``*.safetensors.index.json``, ``*.safetensors.index.fp16.json``), or pickles (``*.bin``).
safetensors always come before pickles; pickles are read only with ``allow_pickle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import LazyState
from ..errors import GmkitError
from .pickles import converted

STEMS = {"safetensors": ("diffusion_pytorch_model", "model"), "bin": ("diffusion_pytorch_model", "pytorch_model")}


@dataclass(frozen=True)
class Weights:
    """One component's weights: a single file, or an index naming shards (``index`` set)."""

    files: tuple[str, ...]
    pickled: bool
    index: str | None = None


def choose_weights(names: set[str], folder: str, prefer_half: bool, label: str, what: str) -> Weights:
    """The weights to read from ``folder`` ("" = the root): safetensors before pickles; within each,
    the ``fp16`` variant first when a half dtype is wanted (either one serves any dtype: weights are
    cast on load); a single file before shards."""
    pre = f"{folder}/" if folder else ""
    variants = ("fp16", None) if prefer_half else (None, "fp16")
    for ext in ("safetensors", "bin"):
        for variant in variants:
            v = f".{variant}" if variant else ""
            for stem in STEMS[ext]:
                if f"{pre}{stem}{v}.{ext}" in names:
                    return Weights((f"{pre}{stem}{v}.{ext}",), ext == "bin")
                index = f"{pre}{stem}.{ext}.index{v}.json"
                if index in names:
                    return Weights((), ext == "bin", index)
    found = sorted(n[len(pre):] for n in names if n.startswith(pre) and "/" not in n[len(pre):])
    raise GmkitError(f"{label}: missing file {pre}diffusion_pytorch_model.safetensors for the {what} "
                     f"(found in {folder or 'the repo root'}: {', '.join(found[:8]) or 'nothing'})")


def shard_files(root: Path, weights: Weights, label: str) -> Weights:
    """An index's shards, read from the (fetched) index file; a single file as it is."""
    if weights.index is None:
        return weights
    path = root / weights.index
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        shards = sorted({str(v) for v in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise GmkitError(f"{label}: {weights.index} is not a valid shard index (no weight_map)") from None
    if not shards or any("/" in s or s.startswith(".") for s in shards):
        raise GmkitError(f"{label}: {weights.index} names no shards, or shards outside its folder")
    folder = weights.index.rsplit("/", 1)[0] + "/" if "/" in weights.index else ""
    return Weights(tuple(folder + s for s in shards), weights.pickled, weights.index)


def read_weights(root: Path, weights: Weights, allow_pickle: bool, label: str) -> LazyState:
    """The component's tensors, lazily (pickles are converted once to safetensors first)."""
    state = LazyState()
    for rel in weights.files:
        path = converted(root / rel, allow_pickle, label) if weights.pickled else root / rel
        part = LazyState.from_file(path)
        clash = set(part) & set(state)
        if clash:
            raise GmkitError(f"{label}: tensor {sorted(clash)[0]} appears in two shards")
        state.update(part)
    return state
