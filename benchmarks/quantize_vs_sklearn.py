"""k-means quality and speed of ``gmkit quantize`` against scikit-learn's ``KMeans``, in one run.

Data: ``--clusters`` well-separated Gaussian clusters in ``--dim`` dimensions (centres drawn from
N(0, I), points = centre + N(0, 0.3^2 I)), ``--vectors`` points. The noise floor, the distortion
the true centres reach, is 0.09 per dimension. Both fit ``--clusters`` codes with k-means++
seeding on one thread, for several seeds; reported: mean squared error per dimension (the
distortion), fit seconds, and the ratios.

    OMP_NUM_THREADS=1 python benchmarks/quantize_vs_sklearn.py            # writes benchmarks/results/quantize_vs_sklearn.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gmkit.codebooks import assign, fit  # noqa: E402


def clusters(n: int, k: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g)
    labels = torch.randint(k, (n,), generator=g)
    return centres[labels] + noise * torch.randn(n, dim, generator=g), centres


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quantize_vs_sklearn.json"))
    args = ap.parse_args()

    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    x, centres = clusters(args.vectors, args.clusters, args.dim, 0.3, seed=1234)
    floor = float((x - centres[torch.cdist(x, centres).argmin(1)]).pow(2).mean())
    xn = x.numpy()
    rows = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        books = fit(x, args.clusters, seed=seed)
        t_g = time.perf_counter() - t0
        _, recon = assign(x, books)
        d_g = float((x - recon).pow(2).mean())
        with threadpool_limits(1):
            t0 = time.perf_counter()
            km = KMeans(n_clusters=args.clusters, random_state=seed).fit(xn)
            t_s = time.perf_counter() - t0
        d_s = float(km.inertia_) / x.numel()
        rows.append({"seed": seed, "gmkit_mse_per_dim": round(d_g, 5), "gmkit_seconds": round(t_g, 3),
                     "sklearn_mse_per_dim": round(d_s, 5), "sklearn_seconds": round(t_s, 3),
                     "sklearn_iterations": int(km.n_iter_)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "seed"}
    import sklearn

    result = {
        "data": {"vectors": args.vectors, "dim": args.dim, "clusters": args.clusters, "noise_std": 0.3,
                 "noise_floor_mse_per_dim": round(floor, 5)},
        "hardware": {"cpu": cpu_name(), "threads": 1},
        "versions": {"torch": torch.__version__, "sklearn": sklearn.__version__},
        "runs": rows,
        "median": med,
        "distortion_ratio_gmkit_over_sklearn": round(med["gmkit_mse_per_dim"] / med["sklearn_mse_per_dim"], 4),
        "speed_ratio_sklearn_time_over_gmkit_time": round(med["sklearn_seconds"] / med["gmkit_seconds"], 3),
        "command": "OMP_NUM_THREADS=1 python benchmarks/quantize_vs_sklearn.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
