"""Distances between two sets of feature vectors (rows), batched, float64 where it matters."""

from __future__ import annotations

import numpy as np
import torch


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (np.cov, ddof 1) of (N, D) features, in float64."""
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N, D) features with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance_stats(mu_a: np.ndarray, ca: np.ndarray, mu_b: np.ndarray, cb: np.ndarray,
                           rows_a: np.ndarray | None = None) -> float:
    """||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 (Ca Cb)^{1/2})   (Frechet distance of two Gaussians,
    Heusel et al. 2017). Tr((Ca Cb)^{1/2}) is computed as the trace of the square root of the
    symmetric PSD matrix Ca^{1/2} Cb Ca^{1/2}, via eigendecompositions with negative eigenvalues
    clipped, so singular covariances (fewer samples than dimensions) give a finite answer.

    ``rows_a``: the centred features A behind Ca = A^T A / (N - 1), worth giving when N < D: the
    N x N matrix A Cb A^T / (N - 1) has the same nonzero eigenvalues as Ca^{1/2} Cb Ca^{1/2}, so the
    same trace comes at N^2 D cost instead of D^3 (2048-d Inception features, a few hundred samples)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    ca, cb = np.atleast_2d(np.asarray(ca, np.float64)), np.atleast_2d(np.asarray(cb, np.float64))
    if mu_a.shape != mu_b.shape or ca.shape != cb.shape or ca.shape != (len(mu_a), len(mu_a)):
        raise ValueError(f"statistics disagree in dimension: {mu_a.shape}, {ca.shape} vs {mu_b.shape}, {cb.shape}")
    diff = mu_a - mu_b
    if rows_a is not None and len(rows_a) < len(mu_a):
        a = np.asarray(rows_a, np.float64)
        m = a @ cb @ a.T / (len(a) - 1)
    else:
        w, v = np.linalg.eigh((ca + ca.T) / 2)
        sqrt_ca = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = sqrt_ca @ cb @ sqrt_ca
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(max(diff @ diff + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 samples in each set")
    mu_a, ca = gaussian_stats(a)
    return frechet_distance_stats(mu_a, ca, *gaussian_stats(b), rows_a=a - mu_a)


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 20, subset_size: int = 500,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
    random subsets (Binkowski et al. 2018). Returns (mean, standard deviation over subsets)."""
    a, b = torch.as_tensor(np.asarray(a), dtype=torch.float64), torch.as_tensor(np.asarray(b), dtype=torch.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("need at least 2 samples in each set")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]
        y = b[torch.randperm(len(b), generator=g)[:m]]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = 1 - torch.eye(m, dtype=torch.float64)
        mmd = (kxx * off).sum() / (m * (m - 1)) + (kyy * off).sum() / (m * (m - 1)) - 2 * kxy.mean()
        values.append(float(mmd))
    return float(np.mean(values)), float(np.std(values))


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    radii = []
    for chunk in x.split(1024):
        dist = torch.cdist(chunk, x)
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # +1: the row itself is at distance 0
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``points`` inside at least one ball (centre, radius)."""
    inside = []
    for chunk in points.split(1024):
        inside.append((torch.cdist(chunk, centres) <= radii[None]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision = share of fake samples
    inside the real manifold (union of k-NN balls around real samples), recall = share of real
    samples inside the fake manifold."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"precision/recall need more than k={k} samples in each set")
    return _coverage(f, r, _knn_radii(r, k)), _coverage(r, f, _knn_radii(f, k))


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 3-4), with balls of radius NND_k around the real
    samples only, so outliers among the real data do not inflate them:
    density = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]  (may exceed 1; ~1 for matching sets),
    coverage = 1/N sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if len(r) <= k or len(f) < 1:
        raise ValueError(f"density/coverage need more than k={k} real samples")
    radii = _knn_radii(r, k)
    inside_count = torch.zeros(len(f))
    covered = []
    for chunk, rad in zip(r.split(1024), radii.split(1024)):
        inside = torch.cdist(chunk, f) < rad[:, None]  # (real chunk, fake)
        inside_count += inside.sum(0)
        covered.append(inside.any(1))
    return float(inside_count.double().mean() / k), float(torch.cat(covered).double().mean())
