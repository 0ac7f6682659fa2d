"""Sampling speed, measured: warm-up, then the median of several timed runs per configuration."""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .registry import load


@dataclass
class BenchRow:
    model: str
    family: str
    sampler: str
    steps: int
    batch: int
    device: str
    dtype: str
    images_per_s: float
    ms_per_step: float
    seconds_per_batch: float
    peak_memory_mb: float
    runs: int

    def as_dict(self) -> dict:
        return asdict(self)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return rss_kb / (2**20 if sys.platform == "darwin" else 2**10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(model: str, steps: int | None, batch: int, device: torch.device, dtype: torch.dtype,
              runs: int = 3, sampler: str | None = None, compile: bool = False) -> BenchRow:
    net, src = load(model, device, dtype)
    if compile:
        net.unet = torch.compile(net.unet) if hasattr(net, "unet") else net
    opts = dict(src.defaults)
    if sampler:
        opts["sampler"] = sampler
    if steps:
        opts["steps"] = steps
    opts.setdefault("sampler", "ddpm")
    steps = opts.get("steps") or (net.config.num_train_timesteps if opts["sampler"] == "ddpm" else 50)
    opts["steps"] = steps
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(batch)]  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Warm-up: a short run with the same shapes (allocator, kernels, compile caches).
    net.sample(gens(), **{**opts, "steps": min(steps, 5)})
    _sync(device)
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        net.sample(gens(), **opts)
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return BenchRow(model=model, family=net.name, sampler=opts["sampler"], steps=steps, batch=batch, device=str(device),
                    dtype=str(dtype).replace("torch.", ""), images_per_s=round(batch / t, 3),
                    ms_per_step=round(1000 * t / steps, 3), seconds_per_batch=round(t, 4),
                    peak_memory_mb=round(_peak_memory_mb(device), 1), runs=runs)
