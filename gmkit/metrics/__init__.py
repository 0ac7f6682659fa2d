"""Sample-quality metrics: ``evaluate(images, reference, extractor=...)`` is the one entry.

Images are compared with a reference (a data source's held-out split, or a statistics file) in the
feature space of a named extractor: FD, KID, precision/recall and density/coverage, beside the
real-vs-real baseline. Figures are named after the extractor (``FD-dinov2``, ``FD-gmkit-mnist``):
only distances over the published InceptionV3 FID weights are called FID.
"""

from .distances import density_coverage, frechet_distance, kernel_inception_distance, precision_recall
from .evaluate import evaluate, save_stats

__all__ = ["evaluate", "save_stats", "frechet_distance", "kernel_inception_distance", "precision_recall",
           "density_coverage"]
