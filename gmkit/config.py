"""Config dataclasses <-> JSON, and ``--set key=value`` overrides (dotted keys reach nested configs)."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from .errors import GmkitError


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
