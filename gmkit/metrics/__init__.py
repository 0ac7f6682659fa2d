"""Sample-quality metrics over a frozen feature extractor: Frechet distance, KID, precision/recall.

Figures are named after the extractor that produced them (``FD-gmkit-mnist``): only distances
over the standard InceptionV3 weights may be called FID, and gmkit ships none.
"""

from .distances import frechet_distance, kernel_inception_distance, precision_recall

__all__ = ["frechet_distance", "kernel_inception_distance", "precision_recall"]
