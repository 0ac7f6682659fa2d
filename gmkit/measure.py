"""Generate and score: what ``gmkit bench`` and ``gmkit compare`` share.

``sample_options`` resolves what a sample call will run (sampler, steps, network calls per image),
``generate`` makes images with seeds 0..n-1 and times each full batch, ``count_flops`` counts one
image's FLOPs, and ``score_images`` is the one place a set of images meets the metrics
(``gmkit.metrics``), so a change of metric or extractor slots in here.
"""

from __future__ import annotations

import functools
import time

import torch

from .families.base import STEPS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_options(net, defaults: dict, sampler: str | None = None, steps: int | None = None) -> tuple[dict, int, bool]:
    """The options a sample call gets, its network calls per image, and whether steps apply."""
    opts = dict(defaults)
    if STEPS not in net.capabilities:  # one network pass per image (GAN, VAE, flow): no sampler, no steps
        opts.pop("sampler", None)
        opts.pop("steps", None)
        return opts, 1, False
    plan = net.sampling_plan(sampler or opts.get("sampler"), steps or opts.get("steps"))
    opts.update(sampler=plan.sampler, steps=plan.steps)
    return opts, plan.network_calls, True


def generators(start: int, count: int) -> list[torch.Generator]:
    """Image i comes from seed i, whatever the batch (the CLI's --seed convention with S = 0)."""
    return [torch.Generator().manual_seed(i) for i in range(start, start + count)]


def generate(net, opts: dict, n: int, batch: int, device: torch.device, callback=None) -> tuple[torch.Tensor, list[float]]:
    """``n`` images (seeds 0..n-1) in batches, and the seconds each full batch took."""
    chunks, times = [], []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        t0 = time.perf_counter()
        chunks.append(net.sample(generators(start, count), **opts).float().cpu())
        sync(device)
        if count == batch:
            times.append(time.perf_counter() - t0)
        if callback is not None:
            callback(start + count, n)
    return torch.cat(chunks), times


def warm_up(net, opts: dict, batch: int, device: torch.device) -> None:
    """A short run with the same shapes (allocator, kernels, compile caches)."""
    net.sample(generators(0, batch), **({**opts, "steps": min(opts["steps"], 5)} if "steps" in opts else opts))
    sync(device)


def count_flops(net, opts: dict, calls: int) -> float | None:
    """FLOPs per image: one image through one network call (FlopCounterMode), times the calls."""
    from torch.utils.flop_counter import FlopCounterMode

    one = {**opts, "steps": 1} if "steps" in opts else dict(opts)
    try:
        with FlopCounterMode(display=False) as counter:
            net.sample(generators(0, 1), **one)
        return float(counter.get_total_flops()) * calls
    except Exception:  # an op the counter cannot trace: leave the column empty rather than fail the bench
        return None


@functools.lru_cache(maxsize=2)
def quality_extractor(reference: str, extractor: str | None = None, device: str = "cpu", token: str | None = None):
    """The extractor that scores images against ``reference``, loaded once: the one named, else the
    reference's own (mnist for the bundled digits, a statistics file's), else inception. ``token``:
    for a Hub extractor."""
    from .metrics.evaluate import resolve

    return resolve(reference, extractor, None, device, token=token)


def quality_problem(reference: str, extractor: str | None = None, device: str = "cpu",
                    token: str | None = None) -> str | None:
    """Why images cannot be scored against ``reference`` (e.g. the extractor's weights are missing), or None."""
    from .errors import GmkitError

    try:
        quality_extractor(reference, extractor, device, token)
    except GmkitError as e:
        return str(e)
    return None


def score_images(images: torch.Tensor, reference: str, seeds: str, extractor=None, device: str = "cpu") -> dict:
    """Sample quality of ``images`` against ``reference``'s held-out split through ``extractor`` (a name,
    a loaded extractor, or None for the reference's own), beside the real-vs-real baseline: FD, KID,
    precision/recall, density/coverage, their names, the extractor, the sample count and which seeds."""
    from .metrics.evaluate import evaluate
    from .metrics.extractors import Extractor

    ext = extractor if isinstance(extractor, Extractor) else quality_extractor(reference, extractor, str(device))
    r = evaluate(images, reference, ext)
    m, b = r["metrics"], r["baseline_real_train_vs_heldout"] or {}
    return {**m, "n": r["n"], "seeds": seeds, "baseline_fd": b.get("fd"), "baseline_kid": b.get("kid"),
            "baseline_precision": b.get("precision"), "baseline_recall": b.get("recall"), "baseline_n": r["baseline_n"],
            "fd_name": r["names"]["fd"], "kid_name": r["names"]["kid"], "extractor": r["extractor"],
            "confident_share": r.get("confident_share"), "class_histogram": r.get("class_histogram"),
            "reference": r["reference"], "warnings": r["warnings"]}
