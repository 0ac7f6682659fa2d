"""LoRA adapters (Hu et al. 2021) merged into a model's weights as they are read.

A LoRA holds, per adapted layer, a down projection A (r x in) and an up projection B (out x r);
the layer's weight becomes W + scale * (alpha / r) * B A (eq. 3 of the paper, with the alpha / r
scaling of its section 4.1). Merging at load time costs nothing at sampling time. Three key formats:

    diffusers / PEFT   unet.<module>.lora_A.weight, .lora_B.weight   (text_encoder.<module>... for CLIP)
    diffusers (old)    unet.<module>.processor.to_q_lora.down.weight, .up.weight; <module>.lora_linear_layer.*
    kohya              lora_unet_<module_with_underscores>.lora_down.weight, .lora_up.weight, .alpha
                       (lora_te_... for the text encoder)

``--lora FILE[:SCALE]``: FILE is a local ``.safetensors`` file or a Hub id (``org/name``: its one
``.safetensors`` file, ``pytorch_lora_weights.safetensors`` first; or ``org/name/file.safetensors``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..checkpoint import PICKLE_SUFFIXES, LazyState, load_tensors
from ..errors import GmkitError
from ..resolved import Resolved
from .clip import clip_key
from .diffusers import rename_key
from .hub import HubId, hub_repo, parse_hub_id
from .pickles import converted

PREFERRED = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights file name
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass
class Pair:
    """One adapted layer: B (up), A (down), and alpha (None: alpha = r, a scale of 1)."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None

    def delta(self, shape: tuple[int, ...], scale: float) -> torch.Tensor:
        r = self.down.shape[0]
        a = (self.alpha if self.alpha is not None else r) / r
        d = self.up.float().flatten(1) @ self.down.float().flatten(1)
        return (scale * a * d).reshape(shape)


def parse_spec(spec: str) -> tuple[str, float]:
    """``FILE[:SCALE]`` -> (FILE, SCALE); a trailing ``:number`` is the scale (default 1)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def read_lora(source: str, token: str | None = None, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA file's tensors and metadata, from a path or a Hub id."""
    path = Path(source).expanduser()
    if not path.is_file():
        hub = parse_hub_id(source)
        if hub is None or source.startswith((".", "/", "~")):
            raise GmkitError(f"--lora {source}: no such file, and not a Hub id")
        if hub.subfolder and hub.subfolder.endswith((".safetensors", *PICKLE_SUFFIXES)):
            folder, _, name = hub.subfolder.rpartition("/")
            files = hub_repo(HubId(hub.repo, hub.revision, folder or None), token)
        else:
            files = hub_repo(hub, token)
            top = sorted(n for n in files.names if "/" not in n and n.endswith(".safetensors"))
            name = PREFERRED if PREFERRED in top else (top[0] if len(top) == 1 else None)
            if name is None:
                raise GmkitError(f"--lora {source}: {'no' if not top else len(top)} .safetensors files at the repo root; "
                                 f"name one ({source}/FILE.safetensors)")
        path = files.fetch([name]) / name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        path = converted(path, allow_pickle, f"--lora {source}")
    tensors, meta = load_tensors(path)
    return tensors, meta


def _alpha_from_metadata(meta: dict) -> dict[str, float]:
    """diffusers writes PEFT's lora_alpha per model in the file's metadata (``lora_adapter_metadata``)."""
    try:
        data = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except (TypeError, ValueError):
        return {}
    out = {}
    for k, v in data.items():  # e.g. {"unet.lora_alpha": 8, "unet.r": 4, ...}
        target, _, key = k.partition(".")
        if key == "lora_alpha" and isinstance(v, (int, float)):
            out[target] = float(v)
    return out


def _split(key: str) -> tuple[str, str, str] | None:
    """A key -> (target, module, part) with part in down/up/alpha; None for keys that are not LoRA."""
    if key.startswith(("lora_unet_", "lora_te_", "lora_te1_")):  # kohya: module names joined by underscores
        head, _, rest = key.partition(".")
        target = "unet" if head.startswith("lora_unet_") else "text_encoder"
        module = head.split("_", 2)[2] if target == "unet" else head.split("_", 2)[2]
        part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(rest)
        return (target, "~" + module, part) if part else None
    target = "unet"
    for prefix in ("unet.", "text_encoder."):
        if key.startswith(prefix):
            target, key = prefix[:-1], key[len(prefix):]
    m = _OLD_PROCESSOR.search(key)
    if m:
        proj = "to_out.0" if m[1] == "to_out" else m[1]
        return target, key[:m.start()] + "." + proj, m[2]
    for suffix, part in ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_A.default.weight", "down"),
                         (".lora_B.default.weight", "up"), (".lora_linear_layer.down.weight", "down"),
                         (".lora_linear_layer.up.weight", "up"), (".lora.down.weight", "down"), (".lora.up.weight", "up"),
                         (".alpha", "alpha")):
        if key.endswith(suffix):
            return target, key[:-len(suffix)], part
    return None


def parse_lora(tensors: dict[str, torch.Tensor], meta: dict, label: str) -> dict[str, dict[str, Pair]]:
    """{target: {module: Pair}}; a kohya module is marked with a leading "~" (underscored name)."""
    alphas = _alpha_from_metadata(meta)
    out: dict[str, dict[str, Pair]] = {}
    skipped = []
    for key, t in tensors.items():
        parsed = _split(key)
        if parsed is None:
            skipped.append(key)
            continue
        target, module, part = parsed
        pair = out.setdefault(target, {}).setdefault(module, Pair(alpha=alphas.get(target)))
        if part == "alpha":
            pair.alpha = float(t)
        else:
            setattr(pair, part, t)
    if skipped and not out:
        raise GmkitError(f"{label}: not a LoRA file in a known format (diffusers/PEFT or kohya); e.g. key {skipped[0]!r}")
    if skipped:
        raise GmkitError(f"{label}: {len(skipped)} keys are not LoRA weights gmkit reads, e.g. {skipped[0]!r}")
    for target, modules in out.items():
        for module, p in modules.items():
            if p.down is None or p.up is None:
                raise GmkitError(f"{label}: {target} layer {module.lstrip('~')} has no {'down' if p.down is None else 'up'} weight")
            if p.up.shape[1] != p.down.shape[0]:
                raise GmkitError(f"{label}: {target} layer {module.lstrip('~')}: ranks differ (up {tuple(p.up.shape)}, "
                                 f"down {tuple(p.down.shape)})")
    return out


def _targets(resolved: Resolved) -> dict[str, tuple[LazyState, str]]:
    """Where each LoRA target's weights are: (state, key prefix)."""
    out = {}
    if isinstance(resolved.state, LazyState) and any(k.startswith("unet.") for k in resolved.state):
        out["unet"] = (resolved.state, "unet.")
    if isinstance(resolved.text_state, LazyState):
        out["text_encoder"] = (resolved.text_state, "")
    return out


def apply_lora(resolved: Resolved, specs: Sequence[str], token: str | None = None, allow_pickle: bool = False) -> None:
    """Merge each ``FILE[:SCALE]`` adapter into ``resolved``'s weights (as deltas applied when read)."""
    targets = _targets(resolved)
    for spec in specs:
        source, scale = parse_spec(spec)
        label = f"--lora {source}"
        tensors, meta = read_lora(source, token, allow_pickle)
        for target, modules in parse_lora(tensors, meta, label).items():
            if target not in targets:
                raise GmkitError(f"{label}: adapts a {target}, which this {resolved.family.name} model has not"
                                 f"{' (its text encoder is built in, not read from the source)' if target == 'text_encoder' else ''}")
            state, prefix = targets[target]
            underscored = {k[len(prefix):-len(".weight")].replace(".", "_"): k for k in state
                           if k.startswith(prefix) and k.endswith(".weight")}
            for module, pair in modules.items():
                if target == "text_encoder" and not module.startswith("~"):
                    module = clip_key(module)
                key = underscored.get(module[1:]) if module.startswith("~") else prefix + rename_key(module + ".weight")
                if key is None or key not in state:
                    raise GmkitError(f"{label}: layer {module.lstrip('~')} is not in this model's {target}")
                shape = state.shape(key)
                out_f, in_f = shape[0], (shape[1] if len(shape) > 1 else 1)
                if pair.up.shape[0] != out_f or pair.down.shape[1] != in_f:
                    raise GmkitError(f"{label}: layer {module.lstrip('~')} is {out_f}x{in_f} in this model, the LoRA "
                                     f"adapts {pair.up.shape[0]}x{pair.down.shape[1]}")
                # computed as the weight is read, so a large adapter never sits in memory merged twice
                state.add_delta(key, lambda w, p=pair, s=scale: w + p.delta(tuple(w.shape), s))
