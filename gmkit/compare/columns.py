"""One column of the table per model: latent space, training stability, sample quality and speed
(from the same samples), likelihood and parameters; n/a with the reason where a cell cannot be filled."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import GmkitError
from ..families.base import DECODE, ENCODE, LIKELIHOOD, STEPS
from ..measure import count_flops, generate, quality_problem, sample_options, score_images, warm_up
from .claims import TEXTBOOK
from .columns_base import na
from .stability import find_log, read_log, stability_from_log


@dataclass
class Settings:
    data: str = "mnist"
    extractor: str | None = None  # quality's feature extractor (None: the data's own, else inception)
    samples: int = 256  # images per model for quality
    slow_samples: int = 16  # ... for configurations with more than slow_steps network calls per image
    slow_steps: int = 100
    batch_size: int = 64
    sweep_steps: list[int] = field(default_factory=lambda: [10, 20])  # extra DDIM points for quality vs steps
    sweep_samples: int = 64
    likelihood_images: int = 500
    seeds: int = 0  # > 0: train this many short runs per family for the spread of final quality
    train_steps: int = 200
    seed_samples: int = 64
    logs: dict[str, str] = field(default_factory=dict)  # model -> log.jsonl (or run folder) override
    device: str = "cpu"
    dtype: str = "float32"



def _images_folder(source: str) -> bool:
    p = Path(source)
    return p.is_dir() and not (p / "model.safetensors").exists() and any(
        f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp") for f in p.iterdir())


def describe_latent(net, real: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Kind and size of a family's latent space: its own hook, else inferred from config and encode."""
    described = net.latent_description()
    if described:
        return {"text": described.get("text", str(described)), **described}
    if STEPS in net.capabilities:
        shape = list(net.image_shape)
        return {"kind": "none", "shape": shape,
                "text": f"none: works in data space (DDIM inversion maps an image to {'x'.join(map(str, shape))} noise)"}
    if ENCODE in net.capabilities:
        kwargs = {"class_label": labels[:2]} if net.num_classes and labels is not None else {}
        try:
            enc = net.encode(real[:2].to(net.device), **kwargs)
        except GmkitError as e:
            return na(f"encode failed: {e}")
        key = net.latent_key or next(iter(enc))
        z = enc[key]
        shape = list(z.shape[1:])
        size = math.prod(shape)
        dims = math.prod(net.image_shape)
        if not z.is_floating_point():
            return {"kind": "discrete", "shape": shape, "text": f"discrete: {'x'.join(map(str, shape))} codes"}
        if LIKELIHOOD in net.capabilities and DECODE in net.capabilities and size == dims:
            return {"kind": "exact", "shape": shape, "text": f"exact (invertible): {size}-d = data dimension"}
        return {"kind": "continuous", "shape": shape,
                "text": f"continuous: {size}-d" + (" Gaussian posterior" if "logvar" in enc else "")}
    return {"kind": "none", "shape": None, "text": "none declared"}


def parameter_counts(net, opts: dict) -> dict:
    """All parameters, and those a sample call touches (forward hooks on one tiny sample)."""
    from ..measure import generators

    total = sum(p.numel() for p in net.parameters())
    used: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: used.add(id(mod))) for m in net.modules()
             if any(True for _ in m.parameters(recurse=False))]
    try:
        net.sample(generators(0, 1), **({**opts, "steps": min(opts["steps"], 2)} if "steps" in opts else opts))
    except Exception:  # counting is a nicety; the total stands alone
        used = set()
    finally:
        for h in hooks:
            h.remove()
    sampling = sum(p.numel() for m in net.modules() if id(m) in used or m is net for p in m.parameters(recurse=False))
    out = {"total": total, "text": f"{total / 1e6:.3f}M"}
    if used and sampling < total:
        out["sampling"] = sampling
        out["text"] += f" ({sampling / 1e6:.3f}M used to sample)"
    return out


def likelihood(net, data, n: int) -> dict:
    if LIKELIHOOD not in net.capabilities:
        return na(net.no_likelihood or f"{net.name} declares no likelihood capability")
    # Diffusion / score models integrate the probability-flow ODE (~50 network calls and backward
    # passes per image): compare evaluates fewer images for them (their ``compare_likelihood_images``).
    x = data.images(min(n, len(data), net.compare_likelihood_images or n))
    kwargs = {}
    if net.num_classes:
        if data.labels is None:
            return na("class-conditional model and the data has no labels")
        kwargs["labels"] = data.labels[:n]
    t0 = time.perf_counter()
    r = net.bits_per_dim(x, **kwargs)
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["data"] = f"{len(x)} held-out images"
    if "bpd" in r and "ode_steps" in r:
        out["value"] = round(r["bpd"], 4)
        out["text"] = (f"{r['bpd']:.3f} bits/dim (probability-flow ODE density, {r['ode_steps']} Heun steps, Hutchinson "
                       f"trace, uniform dequantization bound; {len(x)} held-out images)")
    elif "bpd" in r:
        out["value"] = round(r["bpd"], 4)
        out["text"] = f"{r['bpd']:.3f} bits/dim (exact density, uniform dequantization bound; {len(x)} held-out images)"
    elif "iwae_bpd" in r:
        out["value"] = round(r["iwae_bpd"], 4)
        out["text"] = (f"<= {r['iwae_bpd']:.3f} bits/dim (IWAE-{r.get('samples')} bound; ELBO {r['elbo_bpd']:.3f}; "
                       f"{len(x)} held-out images)")
    else:
        key = next((k for k, v in r.items() if "bpd" in k and isinstance(v, float)), None)
        out["value"] = round(r[key], 4) if key else None
        out["text"] = f"{r[key]:.3f} bits/dim ({key})" if key else "computed (see report.json)"
    return out


def _quality_text(q: dict) -> str:
    lost = f"; {q['nonfinite_samples']} of {q['n_generated']} samples non-finite, excluded" if q.get("nonfinite_samples") else ""
    return f"{q['fd']:.2f} (n={q['n']}; real-vs-real {q['baseline_fd']:.2f}{lost})"


class Column:
    """One model's measurements; ``cells`` maps property -> {text, numbers..., or na}."""

    def __init__(self, source: str):
        self.source = source
        self.cells: dict[str, dict] = {}
        self.images: torch.Tensor | None = None
        self.family: str | None = None
        self.info: dict = {}
        self.log: list[dict] = []
        self.net = None  # kept for the quality-vs-steps sweep; dropped before the report is written
        self.opts: dict | None = None


PROPERTIES = ["family", "latent", "stability", "quality", "kid", "precision_recall", "quality_common", "speed",
              "time_per_image", "network_calls", "likelihood", "parameters", "trait"]
LABELS = {"family": "family", "latent": "latent space", "stability": "training stability",
          "quality": "sample quality: FD", "kid": "KID", "precision_recall": "precision / recall",
          "quality_common": "FD at a common n", "speed": "sampling speed", "time_per_image": "time per image",
          "network_calls": "network calls per image", "likelihood": "likelihood", "parameters": "parameters",
          "trait": "distinctive trait (textbook)"}


def measure(source: str, s: Settings, test_data, dev, dt, say: Callable[[str], None], token: str | None = None,
            ext=None) -> Column:
    """One model's column. ``token``: for a Hub repo ``source``; ``ext``: the quality extractor, loaded
    once by the caller (else each score loads ``s.extractor``)."""
    from ..registry import load

    col = Column(source)
    if _images_folder(source):
        from ..imageio import load_image_set

        x, notes = load_image_set(source)
        col.images = x
        col.family = "images"
        col.info = {"kind": "folder of images", "images": len(x), "notes": notes}
        reason = "a folder of images, not a model"
        for p in PROPERTIES:
            col.cells[p] = na(reason)
        col.cells["family"] = {"text": f"images ({len(x)} files)"}
        col.cells["quality"] = _quality_cells(col, x, s, f"files of {source}", ext)
        return col
    try:
        net, src = load(source, dev, dt, token=token)
    except GmkitError as e:
        say(f"gmkit: warning: {source}: {e}")
        reason = "unknown model" if "unknown model" in str(e) else str(e)
        for p in PROPERTIES:
            col.cells[p] = na(reason)
        col.info = {"error": str(e)}
        return col
    col.family = net.name
    data_shape = tuple(test_data.image_shape)
    # Sizes are resized to the data; colour cannot be: e.g. the text-to-image ldm (RGB emoji) against MNIST.
    if net.image_shape[0] != data_shape[0]:
        reason = (f"makes {'x'.join(map(str, net.image_shape))} images; --data {s.data} has "
                  f"{'x'.join(map(str, data_shape))}")
        say(f"gmkit: warning: {source}: {reason}")
        for p in PROPERTIES:
            col.cells[p] = na(reason)
        col.cells["family"] = {"text": net.name, "group": TEXTBOOK.get(net.name, {}).get("group")}
        col.info = {"family": net.name, "checkpoint": str(src.path), "skipped": reason}
        return col
    opts, calls, has_steps = sample_options(net, src.defaults, None, None)
    tb = TEXTBOOK.get(net.name, {})
    col.info = {"family": net.name, "checkpoint": str(src.path), "sample_options": opts,
                "recipe": json.loads(src.meta.get("gmkit.recipe", "{}") or "{}"),
                "gmkit_version_of_checkpoint": src.meta.get("gmkit.version")}
    col.cells["family"] = {"text": f"{net.name}" + (f" ({opts['sampler']}, {calls} steps)" if has_steps else ""),
                           "group": tb.get("group")}
    col.cells["trait"] = {"text": tb.get("trait", "-")}
    col.cells["latent"] = describe_latent(net, test_data.images(2), test_data.labels[:2] if test_data.labels is not None else None)
    col.cells["parameters"] = parameter_counts(net, opts)

    # training stability: the run's log, if there is one
    records, where, why = find_log(source, src.meta, s.logs)
    if records is not None:
        col.log = records
        col.cells["stability"] = stability_from_log(records, where)
    else:
        col.cells["stability"] = na(why)

    # quality and speed from the same samples: seeds 0..n-1, timed per batch after a warm-up
    n = s.samples if calls <= s.slow_steps else min(s.samples, s.slow_samples)
    batch = min(s.batch_size, n)
    col.info["samples"] = n
    col.info["sample_note"] = (f"{n} images (seeds 0-{n - 1})" + (f": fewer, as each takes {calls} network calls "
                                                                  f"(--slow-samples)" if n < s.samples else ""))
    say(f"gmkit: compare {source}: {n} samples{f' x {calls} steps' if has_steps else ''} ...")
    warm_up(net, opts, batch, dev)
    images, times = generate(net, opts, n, batch, dev)
    col.images = images
    if times:
        per_batch = statistics.median(times)
        ips = batch / per_batch
        flops = count_flops(net, opts, calls)
        col.cells["speed"] = {"images_per_s": round(ips, 3), "batch": batch, "batches_timed": len(times),
                              "text": f"{ips:.1f} images/s (batch {batch}, median of {len(times)})"}
        col.cells["time_per_image"] = {"ms": round(1000 / ips, 3), "text": f"{1000 / ips:.1f} ms"}
        col.cells["network_calls"] = {"calls": calls, "gflops_per_image": round(flops / 1e9, 3) if flops else None,
                                      "text": f"{calls}" + (f" ({flops / 1e9:.2f} GFLOP/image)" if flops else "")}
    else:
        col.cells["speed"] = na("no full batch was timed")
    col.cells["quality"] = _quality_cells(col, images, s, f"0-{n - 1}", ext)
    if test_data is not None:
        col.cells["likelihood"] = likelihood(net, test_data, s.likelihood_images)
    col.net = net  # kept for the quality-vs-steps sweep; dropped before the report is written
    col.opts = opts
    return col


def _quality_cells(col: Column, images: torch.Tensor, s: Settings, seeds: str, ext=None) -> dict:
    reason = None if ext is not None else quality_problem(s.data, s.extractor, s.device)
    if reason:
        col.cells["kid"] = col.cells["precision_recall"] = na(reason)
        return na(reason)
    finite = torch.isfinite(images).flatten(1).all(1)
    bad = int((~finite).sum())
    if bad:  # a model that emits NaN is measured on the rest, and the table says how many it lost
        images = images[finite]
    try:
        q = score_images(images, s.data, seeds, ext or s.extractor, s.device)
    except GmkitError as e:
        reason = f"{bad} of {len(finite)} samples non-finite" if bad else str(e)
        col.cells["kid"] = col.cells["precision_recall"] = na(reason)
        return na(reason)
    if bad:
        q["nonfinite_samples"] = bad
        q["n_generated"] = int(len(finite))
    col.cells["kid"] = {"kid": q["kid"], "kid_std": q["kid_std"], "baseline_kid": q["baseline_kid"],
                        "text": f"{q['kid']:.4g} ± {q['kid_std']:.2g} (real {q['baseline_kid']:.4g})"}
    col.cells["precision_recall"] = {"precision": q["precision"], "recall": q["recall"],
                                     "text": f"{q['precision']:.2f} / {q['recall']:.2f} "
                                             f"(real {q['baseline_precision']:.2f} / {q['baseline_recall']:.2f})"}
    return {**q, "text": _quality_text(q)}



# -- quality vs steps, seeds, the whole table -------------------------------------------------------

def steps_sweep(cols: list[Column], s: Settings, dev, say, ext=None) -> list[dict]:
    """DDIM at ``sweep_steps`` for each diffusion checkpoint, plus the columns' own points."""
    points, done = [], set()
    for c in cols:
        net = c.net
        if net is None or STEPS not in net.capabilities or "fd" not in c.cells["quality"]:
            continue
        q = c.cells["quality"]
        ckpt = c.info["checkpoint"]
        points.append({"checkpoint": ckpt, "model": c.source, "sampler": c.opts["sampler"], "steps": c.opts["steps"],
                       "n": q["n"], "fd": q["fd"], "kid": q["kid"], "baseline_fd": q["baseline_fd"],
                       "fd_name": q["fd_name"], "kid_name": q["kid_name"]})
        if ckpt in done or not s.sweep_steps:
            continue
        done.add(ckpt)
        for st in s.sweep_steps:
            sweep_sampler = net.sweep_sampler  # score models have no ddim: heun
            opts = {**c.opts, "sampler": sweep_sampler, "steps": st}
            opts.pop("eta", None)
            say(f"gmkit: compare {c.source}: quality at {sweep_sampler} {st} steps ({s.sweep_samples} samples) ...")
            images, _ = generate(net, opts, s.sweep_samples, min(s.batch_size, s.sweep_samples), dev)
            q2 = score_images(images, s.data, f"0-{s.sweep_samples - 1}", ext or s.extractor, s.device)
            points.append({"checkpoint": ckpt, "model": f"{c.source} (sweep)", "sampler": sweep_sampler, "steps": st,
                           "n": q2["n"], "fd": q2["fd"], "kid": q2["kid"], "baseline_fd": q2["baseline_fd"],
                           "fd_name": q2["fd_name"], "kid_name": q2["kid_name"]})
    return points


def seed_spread(cols: list[Column], s: Settings, dev, workdir: Path, say, ext=None) -> dict:
    """Train ``s.seeds`` short runs per family (default config, --train-steps) and score each."""
    from ..config import TrainConfig, from_dict, to_dict
    from ..data import load_data
    from ..families import get_family
    from ..families.base import TrainSetup
    from ..loop import train
    from ..registry import load

    results: dict[str, dict] = {}
    ds = load_data(s.data, "train")
    for c in cols:
        if c.family in (None, "images") or c.family in results:
            continue
        fam = get_family(c.family)
        runs = []
        for seed in range(s.seeds):
            out = workdir / f"{c.family}-seed{seed}"
            say(f"gmkit: compare: training {c.family} seed {seed} for {s.train_steps} steps ...")
            net, _ = fam.build_for_training(fam.Config(), ds, TrainSetup(out=out, seed=seed, device=dev, data_spec=s.data,
                                                                         quiet=True))
            tdict = {**to_dict(TrainConfig()), **fam.train_defaults, "steps": s.train_steps, "seed": seed,
                     "log_every": max(1, s.train_steps // 50), "checkpoint_every": 10**9, "preview": 0}
            tcfg = from_dict(TrainConfig, tdict, "train config")
            t0 = time.perf_counter()
            try:
                train(net, ds, out, tcfg, dev, {"command": f"gmkit compare --seeds (seed {seed})", "data": s.data}, quiet=True)
            except GmkitError as e:  # a run that diverges is a stability result, not a failure
                runs.append({"seed": seed, "diverged": True, "error": str(e)})
                continue
            trained, src = load(str(out), dev)
            opts, calls, _ = sample_options(trained, src.defaults, None, None)
            opts = {**opts, **dict(trained.preview_options)} if calls > s.slow_steps else opts
            images, _ = generate(trained, opts, s.seed_samples, min(s.batch_size, s.seed_samples), dev)
            q = score_images(images, s.data, f"0-{s.seed_samples - 1}", ext or s.extractor, s.device)
            stab = stability_from_log(read_log(out / "log.jsonl"), str(out / "log.jsonl"))
            runs.append({"seed": seed, "fd": q["fd"], "kid": q["kid"], "train_seconds": round(time.perf_counter() - t0, 1),
                         "tail_cv": stab.get("tail_cv"), "diverged": stab.get("diverged", False), "sample_options": opts})
        fds = [r["fd"] for r in runs if "fd" in r]
        summary = {"runs": runs, "train_steps": s.train_steps, "samples": s.seed_samples, "config": "family default"}
        if len(fds) >= 2:
            mean, std = statistics.fmean(fds), statistics.stdev(fds)
            summary.update(fd_mean=round(mean, 4), fd_std=round(std, 4), fd_cv=round(std / mean, 4) if mean else None)
        diverged = sum(1 for r in runs if r.get("diverged"))
        summary["diverged"] = diverged
        results[c.family] = summary
    return results

