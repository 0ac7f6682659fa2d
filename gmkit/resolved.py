"""The record a model source resolves to, before any network is built.

A leaf module (standard library only): ``registry`` fills it for gmkit checkpoints, and
``interop`` fills it for diffusers pipelines, Hub repos and single-file checkpoints, without
either importing the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


@dataclass
class Resolved:
    """What ``registry.build`` needs: the family, its config and the weights, still on disk.

    ``state`` maps gmkit parameter names to tensors; it is normally a ``checkpoint.LazyState``
    that reads each tensor only when asked, straight into the dtype the caller wants.
    ``text_encoder``: a factory for the prompt encoder that came with the source (a pipeline's
    CLIP), or None when the config names a built-in one (``minilm``); ``text_state`` holds its
    weights (lazily, so LoRA can patch them before it is built). ``files`` records where the
    components were found (folders, weights files), for export and reports.
    """

    source: str
    path: Path
    family: type  # a gmkit.families.base.Family subclass
    config: Any
    state: Mapping[str, Any]
    meta: dict[str, str]
    defaults: dict
    text_encoder: Callable[[], Any] | None = None
    text_state: Mapping[str, Any] | None = None
    files: dict[str, Any] = field(default_factory=dict)
