"""Config dataclasses <-> JSON, ``--set key=value`` overrides (dotted keys reach nested configs), and
the training loop's own config (torch-free, so ``gmkit train --help`` can show its defaults instantly)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from .errors import GmkitError


@dataclass
class TrainConfig:
    steps: int = 10000  # total optimizer steps (a resumed run continues to this number)
    batch_size: int = 64  # global batch: split across DDP processes
    lr: float = 1e-3
    warmup: int = 200  # linear warm-up steps; constant afterwards (so resume equals one long run)
    lr_schedule: str = "constant"  # constant | cosine
    lr_decay_steps: int = 0  # cosine: decay length after warm-up (0 = until --steps)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    preview: int = 16  # images in each checkpoint's sample grid (0 = none)
    save_dtype: str = "fp32"  # fp32 | fp16 | bf16 for model.safetensors
    amp: bool = True  # bf16 autocast on CUDA
    grad_accum: int = 1  # micro-batches per step: batch_size is the effective batch, activations are of one micro-batch


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from ``data``; unknown keys are an error (they are usually typos)."""
    if not isinstance(data, dict):
        raise GmkitError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise GmkitError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings need no quotes: --set beta_schedule=cosine


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings to a nested dict (values parsed as JSON where they parse)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise GmkitError(f"--set {item!r}: expected key=value, e.g. --set unet.dropout=0.1")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise GmkitError(f"--set {key}: {part!r} is not a section of the config")
            node = node[part]
        if parts[-1] not in node:
            raise GmkitError(f"--set {key}: no such setting (known here: {', '.join(sorted(node))})")
        node[parts[-1]] = _parse_value(text)
    return data
