"""The Frechet distance's trace term two ways: through the D x D matrix Ca^1/2 Cb Ca^1/2, and through
the N x N matrix A Cb A^T / (N - 1) that gmkit uses when N < D (same nonzero eigenvalues).

    OMP_NUM_THREADS=1 python benchmarks/fd_trace.py

Prints, for 2048-d features (Inception's) against a 1000-image reference, both values, their
relative difference and both times.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gmkit.metrics.distances import frechet_distance_stats, gaussian_stats  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    d = 2048
    mb, cb = gaussian_stats(rng.normal(size=(1000, d)))
    for n in (256, 1000):
        a = rng.normal(0.1, 1.1, size=(n, d))
        mu, ca = gaussian_stats(a)
        t = time.perf_counter()
        full = frechet_distance_stats(mu, ca, mb, cb)
        t_full = time.perf_counter() - t
        t = time.perf_counter()
        fast = frechet_distance_stats(mu, ca, mb, cb, rows_a=a - mu)
        t_fast = time.perf_counter() - t
        print(f"n={n} d={d}: D x D {full:.6f} in {t_full:.2f} s; N x N {fast:.6f} in {t_fast:.2f} s; "
              f"relative difference {abs(full - fast) / full:.1e}; {t_full / t_fast:.1f}x")


if __name__ == "__main__":
    main()
