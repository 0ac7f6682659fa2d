"""The facts behind ``gmkit models``: bundled checkpoints (read from their headers) and the Hub cache."""

from __future__ import annotations

import json

from .checkpoint import read_header, read_metadata
from .registry import BUNDLED_MODELS, bundled_path


def _param_count(path) -> int:
    """Parameters counted from the safetensors header alone (no tensor is loaded)."""
    total = 0
    for key, info in read_header(path).items():
        if key == "__metadata__":
            continue
        count = 1
        for d in info["shape"]:
            count *= d
        total += count
    return total


def bundled_models() -> list[dict]:
    from .families import get_family

    rows = []
    for name, b in BUNDLED_MODELS.items():
        path = bundled_path(name)
        row = {"name": name, "family": b.family, "file": str(path), "about": b.about, "defaults": b.defaults,
               "size_mb": None, "params": None, "capabilities": sorted(get_family(b.family).capabilities)}
        if path.exists():
            row["size_mb"] = round(path.stat().st_size / 2**20, 2)
            row["params"] = _param_count(path)
            recipe = json.loads(read_metadata(path).get("gmkit.recipe", "{}"))
            row["trained_with"] = recipe.get("command")
        rows.append(row)
    return rows


def cached_models() -> list[dict]:
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache folder yet, or an unreadable one: nothing cached to list
        return []
    return [{"repo": r.repo_id, "type": r.repo_type, "size_mb": round(r.size_on_disk / 2**20, 2),
             "revisions": len(r.revisions)} for r in sorted(info.repos, key=lambda r: r.repo_id) if r.repo_type == "model"]
