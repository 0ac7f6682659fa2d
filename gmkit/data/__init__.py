"""Training data: bundled sets, image folders, tar shards and Hugging Face datasets.

Every source is decoded once, by worker processes, into a compact uint8 cache on disk (or streamed),
and read in batches through ``torch.utils.data``: the decoded data set never lives in memory.

    data = load_data("photos/", image_size=64)      # an ImageData
    data.image_shape, data.num_classes, data.captions
    data.images(8)                                  # the first 8 as floats in [-1, 1]
    for batch in data.batches(256): ...             # every example once, in order

Names resolve lazily, so the decode workers (``decode.py``) start without importing torch.
"""

from __future__ import annotations

_EXPORTS = {"load_data": "core", "load": "core", "DataOptions": "core", "from_plan": "core", "Plan": "cache", "data_names": "core", "list_images": "core",
            "ImageData": "dataset", "CachedData": "dataset", "StreamData": "streams", "make_loader": "loader"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
