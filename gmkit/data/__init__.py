"""Training data: bundled data sets that need no network, and folders of the user's images.

Every source becomes an in-memory ``ImageData`` (images in [-1, 1], optional labels), decoded once
and cached on disk, so data loading is never the bottleneck of training on small images.
"""

from __future__ import annotations

from .core import ImageData, load_data, data_names

__all__ = ["ImageData", "load_data", "data_names"]
