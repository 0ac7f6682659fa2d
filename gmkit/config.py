"""Config dataclasses <-> JSON, ``--set key=value`` overrides (dotted keys reach nested configs), and
the training loop's own config (torch-free, so ``gmkit train --help`` can show its defaults instantly)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
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
    # bf16 autocast on CPUs with native bf16 (AVX512-BF16, AMX); opt-in: it changes the numbers a
    # little, and it is emulated (slower) elsewhere. See docs/performance.md for speed and quality.
    cpu_amp: bool = False
    compile: bool = False  # torch.compile the trained networks (minutes to compile; pays in long runs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from ``data``, checking every value's type against the field's; unknown
    keys are an error (they are usually typos). ``where`` names the config in messages."""
    if not isinstance(data, dict):
        raise GmkitError(f"{where}: expected a JSON object, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise GmkitError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: {', '.join(sorted(names))})")
    kwargs = {key: _typed(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a config's own __post_init__ checks
        raise GmkitError(f"{where}: {e}") from None


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a whole number", float: "a number"}.get(type(value), type(value).__name__) + f" ({_short(value)})"


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _typed(hint, value, where: str):
    """``value`` checked against the type ``hint`` (ints stay ints, an int is accepted as a float)."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise GmkitError(f"{where}: expected a JSON object (a nested config), got {_kind(value)}")
        return from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _typed(option, value, where)
            except GmkitError:
                continue
        raise GmkitError(f"{where}: expected {' or '.join(_WANT.get(o, str(o)) for o in options)}"
                         f"{' or null' if type(None) in args else ''}, got {_kind(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise GmkitError(f"{where}: expected a list, got {_kind(value)}")
        inner = args[0] if args else Any
        return type(value)(_typed(inner, v, f"{where}[{i}]") for i, v in enumerate(value)) if origin is list else \
            tuple(_typed(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool and not isinstance(value, bool) or hint is str and not isinstance(value, str) or \
            hint is int and (isinstance(value, bool) or not isinstance(value, int)) or \
            hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))) or \
            origin is dict and not isinstance(value, dict):
        raise GmkitError(f"{where}: expected {_WANT.get(hint, str(hint))}, got {_kind(value)}")
    return float(value) if hint is float else value


_WANT = {bool: "true or false", str: "a string", int: "a whole number", float: "a number"}

# Generic bounds on config values read from outside (checkpoints, config files, --set), so no config
# can ask for a network or a tensor that exhausts memory before the weights are even compared with it.
# Keys are a field's name (its last dotted part); a family narrows or widens them in ``config_bounds``.
MAX_INT = 1 << 20
MAX_LIST = 64
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "image_size": (1, 4096), "sample_size": (1, 4096), "patch_size": (0, 4096), "in_channels": (1, 64),
    "out_channels": (1, 64), "num_train_timesteps": (1, 100_000),
}


def check_bounds(cfg, where: str = "config", bounds: dict[str, tuple[float, float]] | None = None) -> None:
    """Refuse non-finite numbers, negative or absurd whole numbers and overlong lists anywhere in a config.

    ``bounds`` (by dotted name or field name) override ``CONFIG_BOUNDS``; other whole numbers must lie
    in 0 .. ``MAX_INT``.
    """
    bounds = {**CONFIG_BOUNDS, **(bounds or {})}

    def check_value(name: str, leaf: str, v) -> None:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            if isinstance(v, str) and len(v) > 10_000:
                raise GmkitError(f"{where}.{name}: a string of {len(v):,} characters is too long")
            return
        if isinstance(v, float) and not math.isfinite(v):
            raise GmkitError(f"{where}.{name}: must be a finite number, got {v}")
        if isinstance(v, (list, tuple)):
            if len(v) > MAX_LIST:
                raise GmkitError(f"{where}.{name}: a list of {len(v):,} entries is too long (at most {MAX_LIST})")
            for i, item in enumerate(v):
                check_value(f"{name}[{i}]", leaf, item)
            return
        if isinstance(v, int):
            low, high = bounds.get(name.split("[")[0], bounds.get(leaf, (0, MAX_INT)))
            if not low <= v <= high:
                raise GmkitError(f"{where}.{name}: must be between {low:,} and {high:,}, got {v:,}")
        elif isinstance(v, float) and name in bounds and not bounds[name][0] <= v <= bounds[name][1]:
            raise GmkitError(f"{where}.{name}: must be between {bounds[name][0]:g} and {bounds[name][1]:g}, got {v}")

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            else:
                check_value(prefix + f.name, f.name, v)

    walk(cfg, "")


# Whole-number and range rules of the training loop's settings, by name: (minimum, maximum).
TRAIN_BOUNDS: dict[str, tuple[float, float]] = {
    "steps": (1, 10**12), "batch_size": (1, 65536), "warmup": (0, 10**12), "lr_decay_steps": (0, 10**12),
    "seed": (0, 2**32 - 1), "log_every": (1, 10**12), "checkpoint_every": (1, 10**12), "preview": (0, 256),
}


def check_train_config(t: TrainConfig, where: str = "train") -> TrainConfig:
    """The loop's settings checked once, whatever route set them (flags, ``--set train.*``, a resumed run)."""
    check_bounds(t, where, TRAIN_BOUNDS)
    for name, low, high, low_open, high_open in (("lr", 0, 10, True, False), ("weight_decay", 0, 10, False, False),
                                                 ("grad_clip", 0, 1e9, False, False), ("ema_decay", 0, 1, False, True)):
        v = getattr(t, name)
        if (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
            raise GmkitError(f"{where}.{name}: must be {'>' if low_open else '>='} {low:g} and "
                             f"{'<' if high_open else '<='} {high:g}, got {v}")
    if t.lr_schedule not in ("constant", "cosine"):
        raise GmkitError(f"{where}.lr_schedule: must be constant or cosine, got {t.lr_schedule!r}")
    if t.save_dtype not in ("fp32", "float32", "fp16", "float16", "bf16", "bfloat16"):
        raise GmkitError(f"{where}.save_dtype: must be fp32, fp16 or bf16, got {t.save_dtype!r}")
    return t


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
