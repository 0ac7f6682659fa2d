"""Sampling speed and quality, measured: warm-up, then the median of several timed runs per configuration.

``bench_one`` times one configuration (model, sampler, steps, batch, dtype, compile). Long runs
(DDPM's 1000 network calls) are timed at two short step counts of the same sampler and the full
run's time extrapolated from them, saying so in the row's ``timing``; ``full=True`` times complete
runs. With ``quality_samples`` it also scores that many images of the same configuration
(``measure.score_images``). ``sweep`` runs the cartesian product and ``ddim_claim`` reads off DDIM's
promise from the rows: the fewest steps at which DDIM matches DDPM-1000 quality, and the speed-up.
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from .devices import torch_dtype
from .errors import GmkitError
from .families.base import STEPS
from .measure import count_flops, generate, generators, sample_options, score_images, sync, warm_up
from .registry import load, with_revision

# A configuration counts as reaching the reference quality when its FD is within this share of it.
CLAIM_TOLERANCE = 0.10
# Quick timing: runs of more network calls than this are timed at two short step counts and extrapolated.
QUICK_CALLS = 16
PROBE_STEPS = (4, 8)


@dataclass
class BenchRow:
    model: str
    family: str
    sampler: str
    steps: int  # network calls per image for step-based samplers; 1 for one-pass families
    batch: int
    device: str
    dtype: str
    images_per_s: float
    ms_per_step: float
    seconds_per_batch: float
    peak_memory_mb: float
    runs: int
    # Added by the sweep work; the keys above are unchanged for older JSON readers.
    steps_applicable: bool = True
    compile: bool = False
    ms_per_image: float = 0.0
    gflops_per_image: float | None = None  # matmul/conv/attention FLOPs (torch FlopCounterMode)
    tflops: float | None = None  # achieved: FLOPs per image x images/s
    peak_memory_kind: str = "rss"  # cuda (allocator peak of this configuration) or rss (process peak so far)
    quality: dict | None = field(default=None)
    timing: dict = field(default_factory=dict)  # full, or extrapolated from short runs (and how)

    def as_dict(self) -> dict:
        return asdict(self)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return rss_kb / (2**20 if sys.platform == "darwin" else 2**10)


def _median_seconds(net, opts: dict, batch: int, device: torch.device, runs: int) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        net.sample(generators(0, batch), **opts)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def extrapolated_seconds(net, opts: dict, calls: int, batch: int, device: torch.device, runs: int) -> tuple[float, dict]:
    """Seconds of a full run, from two short runs of the same sampler at ``PROBE_STEPS`` steps.

    Time is linear in network calls: seconds = overhead + calls x per-call time; both runs measure it
    (overhead: noise, decoding, text encoding), so the estimate is honest for samplers with any number
    of calls per step (``sampling_plan``)."""
    points = []
    for k in PROBE_STEPS:
        c = net.sampling_plan(opts.get("sampler"), k).network_calls
        points.append((c, _median_seconds(net, {**opts, "steps": k}, batch, device, runs)))
    (c1, t1), (c2, t2) = points
    per_call = (t2 - t1) / (c2 - c1) if c2 > c1 and t2 > t1 else t2 / c2  # a noisy pair: no overhead term
    overhead = max(t2 - per_call * c2, 0.0)
    seconds = overhead + per_call * calls
    return seconds, {"mode": "extrapolated", "probe_steps": list(PROBE_STEPS), "probe_calls": [c1, c2],
                     "probe_seconds": [round(t1, 4), round(t2, 4)], "per_call_ms": round(1000 * per_call, 3),
                     "overhead_ms": round(1000 * overhead, 3), "full_calls": calls,
                     "rule": "seconds = overhead + network calls x per-call time, both fitted to the two probe runs"}


def bench_one(model: str, steps: int | None, batch: int, device: torch.device, dtype: torch.dtype,
              runs: int = 3, sampler: str | None = None, compile: bool = False, quality_samples: int = 0,
              reference: str = "mnist", net_src=None, full: bool = False, extractor=None) -> BenchRow:
    """Time one configuration (median of ``runs`` after a warm-up). Runs of more than ``QUICK_CALLS``
    network calls are timed at ``PROBE_STEPS`` and extrapolated unless ``full``."""
    net, src = net_src or load(model, device, dtype)
    opts, calls, applicable = sample_options(net, src.defaults, sampler, steps)
    flops = count_flops(net, opts, calls)
    if compile:
        from .runtime import compile_networks

        compile_networks(net, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm_up(net, opts, batch, device)
    if full or not applicable or calls <= QUICK_CALLS:
        t = _median_seconds(net, opts, batch, device, runs)
        timing = {"mode": "full", "full_calls": calls}
    else:
        t, timing = extrapolated_seconds(net, opts, calls, batch, device, runs)
    ips = batch / t
    row = BenchRow(model=model, family=net.name, sampler=opts.get("sampler", "-"), steps=calls, batch=batch,
                   device=str(device), dtype=str(dtype).replace("torch.", ""), images_per_s=round(ips, 3),
                   ms_per_step=round(1000 * t / calls, 3), seconds_per_batch=round(t, 4),
                   peak_memory_mb=round(_peak_memory_mb(device), 1), runs=runs, steps_applicable=applicable,
                   compile=compile, ms_per_image=round(1000 * t / batch, 3),
                   gflops_per_image=round(flops / 1e9, 4) if flops else None,
                   tflops=round(flops * ips / 1e12, 5) if flops else None,
                   peak_memory_kind="cuda" if device.type == "cuda" else "rss", timing=timing)
    if quality_samples:
        images, _ = generate(net, opts, quality_samples, batch, device)
        row.quality = score_images(images, reference, f"0-{quality_samples - 1}", extractor, str(device))
    return row


def sweep(models: list[str], samplers: list[str | None], steps: list[int | None], batches: list[int],
          dtypes: list[torch.dtype], compiles: list[bool], device: torch.device, runs: int = 3,
          quality_samples: int = 0, reference: str = "mnist", say=lambda msg: None, extractor=None,
          full: bool = False, revision: str | None = None, token: str | None = None) -> tuple[list[dict], list[dict]]:
    """Every combination; returns (rows, skipped). A model that cannot load, or a configuration it
    cannot run, is skipped with the reason instead of ending the sweep. ``revision``: of the one Hub
    repo among ``models`` (rows name it ``org/name@REVISION``); ``token``: for every Hub repo."""
    rows, skipped = [], []
    for name in with_revision(models, revision):
        for dt in dtypes:
            try:
                net, src = load(name, device, dt, token=token)
            except GmkitError as e:
                skipped.append({"model": name, "dtype": str(dt).replace("torch.", ""), "reason": str(e)})
                say(f"gmkit: warning: skipping {name}: {e}")
                continue
            has_steps = STEPS in net.capabilities
            seen = set()
            for smp in samplers if has_steps else [None]:
                for s in steps if has_steps else [None]:
                    for b in batches:
                        for comp in compiles:
                            key = (smp, s, b, comp)
                            if key in seen:
                                continue
                            seen.add(key)
                            say(f"gmkit: bench {name} sampler={smp or 'default'} steps={s or 'default'} batch={b} "
                                f"dtype={str(dt).replace('torch.', '')}{' compile' if comp else ''} ...")
                            try:
                                # A fresh model for compiled runs, so the eager rows stay eager.
                                pair = load(name, device, dt, token=token) if comp else (net, src)
                                rows.append(bench_one(name, s, b, device, dt, runs, smp, comp, quality_samples,
                                                      reference, net_src=pair, full=full, extractor=extractor).as_dict())
                            except GmkitError as e:
                                skipped.append({"model": name, "sampler": smp, "steps": s, "batch": b, "reason": str(e)})
                                say(f"gmkit: warning: skipping {name} sampler={smp} steps={s}: {e}")
    return rows, skipped


def pixel_twin(net):
    """The latent diffusion model's UNet, unchanged, working directly on pixels (random weights).

    Same blocks, widths, attention levels, text conditioning and guidance; only the input is the
    image instead of its 4x smaller latent. The first stage becomes an autoencoder of factor 1.
    Sampling cost depends on the architecture, not on the weights, so this is LDM's honest
    pixel-space counterpart at the same output resolution.
    """
    import dataclasses

    from .families.ldm import LDM

    cfg = net.config
    vae = dataclasses.replace(cfg.autoencoder.vae, block_out_channels=cfg.autoencoder.vae.block_out_channels[:1],
                              latent_channels=cfg.in_channels, mid_attention=False)
    twin_cfg = dataclasses.replace(cfg, autoencoder=dataclasses.replace(cfg.autoencoder, vae=vae), latent_scale=1.0)
    torch.manual_seed(0)
    twin = LDM(twin_cfg).eval().requires_grad_(False)
    return twin.to(device=net.device, dtype=next(net.parameters()).dtype, memory_format=torch.channels_last)


def latent_vs_pixel(rows: list[dict], device: torch.device, runs: int = 3, say=lambda msg: None,
                    full: bool = False, token: str | None = None) -> list[dict]:
    """For each latent-diffusion row: the same sampling run by its pixel-space twin, and the ratio."""
    from .families.ldm import LDM

    out = []
    for r in rows:
        if r["family"] != "ldm":
            continue
        dtype = torch_dtype(r["dtype"])
        net, src = load(r["model"], device, dtype, token=token)
        if not isinstance(net, LDM):
            continue
        twin = pixel_twin(net)
        say(f"gmkit: bench the pixel-space twin of {r['model']} ({r['sampler']}, {r['steps']} steps, batch {r['batch']}) ...")
        t = bench_one(r["model"] + " (pixel twin)", r["steps"], r["batch"], device, dtype, runs,
                      r["sampler"], False, 0, net_src=(twin, src), full=full).as_dict()
        out.append({"model": r["model"], "sampler": r["sampler"], "steps": r["steps"], "batch": r["batch"],
                    "resolution": list(net.image_shape), "latent": list(net.sample_shape),
                    "ldm_ms_per_image": r["ms_per_image"], "pixel_ms_per_image": t["ms_per_image"],
                    "ldm_gflops_per_image": r["gflops_per_image"], "pixel_gflops_per_image": t["gflops_per_image"],
                    "speedup": round(t["ms_per_image"] / r["ms_per_image"], 2),
                    "pixel_twin": "the same UNet (random weights) on pixels instead of latents; decoder cost included for ldm"})
    return out


def ddim_claim(rows: list[dict], tolerance: float = CLAIM_TOLERANCE) -> dict:
    """DDIM's claim, measured: the fewest DDIM steps whose FD is within ``tolerance`` of the
    longest DDPM run's (1000 steps when swept), and the images/s ratio between the two.
    Compared at the same batch size and dtype; needs rows with quality."""
    scored = [r for r in rows if r.get("quality") and r["family"] == "ddpm"]
    refs = [r for r in scored if r["sampler"] == "ddpm"]
    if not refs:
        return {"status": "n/a", "reason": "no DDPM-sampler row with quality (sweep ddpm with --quality or --out)"}
    ref = max(refs, key=lambda r: (r["steps"], r["quality"]["n"]))
    cands = sorted((r for r in scored if r["sampler"] == "ddim" and r["batch"] == ref["batch"] and r["dtype"] == ref["dtype"]),
                   key=lambda r: r["steps"])
    if not cands:
        return {"status": "n/a", "reason": "no DDIM row with quality at the reference's batch size and dtype"}
    target = ref["quality"]["fd"] * (1 + tolerance)
    out = {"reference": {k: ref[k] for k in ("model", "sampler", "steps", "batch", "dtype", "images_per_s")} | {"fd": ref["quality"]["fd"]},
           "criterion": f"FD <= {1 + tolerance:.2f} x the reference FD ({target:.3f})",
           "ddim": [{"steps": r["steps"], "fd": r["quality"]["fd"], "images_per_s": r["images_per_s"]} for r in cands],
           "note": f"{ref['quality'].get('fd_name', 'FD')} over the {ref['quality'].get('extractor', '?')} extractor; sample "
                   "counts per row in quality.n. With few samples FD is noisy: compare the gap with the real-vs-real "
                   "baseline (quality.baseline_fd)."}
    hit = next((r for r in cands if r["quality"]["fd"] <= target), None)
    if hit is None:
        out.update(status="not reached", reason=f"no swept DDIM step count reached {target:.3f}")
        return out
    out.update(status="reached", steps=hit["steps"], fd=hit["quality"]["fd"],
               speedup=round(hit["images_per_s"] / ref["images_per_s"], 2))
    return out


def plot_sweep(rows: list[dict], path) -> None:
    """Quality (FD) and speed (images/s) against steps, one line per model/sampler/batch/dtype/compile."""
    from .extras import pyplot

    plt = pyplot()

    fig, (ax_q, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict = {}
    for r in rows:
        key = (r["model"], r["sampler"], r["batch"], r["dtype"], r.get("compile", False))
        groups.setdefault(key, []).append(r)
    for (model, smp, b, dt, comp), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["steps"])
        label = f"{model} ({smp}, b={b}, {dt}{', compiled' if comp else ''})" if smp != "-" else f"{model} (b={b}, {dt})"
        xs = [r["steps"] for r in rs]
        marker = "o-" if len(rs) > 1 else "s"
        q = [(r["steps"], r["quality"]["fd"]) for r in rs if r.get("quality")]
        if q:
            ax_q.plot([a for a, _ in q], [f for _, f in q], marker, label=label)
        ax_t.plot(xs, [r["images_per_s"] for r in rs], marker, label=label)
    base = [r["quality"]["baseline_fd"] for r in rows if r.get("quality")]
    if base:
        ax_q.axhline(statistics.median(base), color="grey", ls="--", lw=1, label="real-vs-real baseline")
    for ax, title in ((ax_q, "sample quality (lower is better)"), (ax_t, "sampling speed")):
        ax.set_xscale("log")
        ax.set_xlabel("network calls per image (steps)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_q.set_ylabel(next((r["quality"]["fd_name"] for r in rows if r.get("quality")), "FD"))
    ax_t.set_ylabel("images / s")
    ax_t.set_yscale("log")
    if not base:
        ax_q.text(0.5, 0.5, "no quality measured\n(use --quality or --out)", ha="center", va="center", transform=ax_q.transAxes)
    ax_t.legend(fontsize=7, loc="best")
    fig.tight_layout()
    from .checkpoint import save_figure

    save_figure(fig, path, dpi=110)
    plt.close(fig)
