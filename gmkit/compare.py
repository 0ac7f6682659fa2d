"""``gmkit compare``: the textbook table of generative families (DESIGN.md section 1), measured.

For each model, on the same data: latent space, training stability, sample quality, sampling
speed, likelihood and parameters. A model that cannot fill a cell gets ``n/a`` with the reason;
an unknown model gets a column of n/a. Every number carries what it was measured on (sample
counts, seeds, device), and ``write_report`` leaves report.json, a sample sheet, plots and a
self-contained index.html.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .errors import GmkitError
from .families.base import DECODE, ENCODE, LIKELIHOOD, STEPS

# What the textbook says (DESIGN.md section 1), per family, printed beside the measurements.
TEXTBOOK = {
    "gan": {"group": "GAN", "latent": "yes", "stability": "unstable", "quality": "high", "speed": "fast",
            "trait": "adversarial training"},
    "vae": {"group": "VAE", "latent": "yes", "stability": "stable", "quality": "medium", "speed": "fast",
            "trait": "structured latent space"},
    "augvae": {"group": "VAE", "latent": "yes", "stability": "stable", "quality": "medium", "speed": "fast",
               "trait": "conditional VAE on augmented views (more data of a chosen class)"},
    "vqvae": {"group": "VAE", "latent": "yes (discrete)", "stability": "stable", "quality": "medium", "speed": "fast",
              "trait": "discrete latent via a codebook, autoregressive prior"},
    "flow": {"group": "Flow", "latent": "exact (invertible)", "stability": "fairly stable", "quality": "medium",
             "speed": "fast", "trait": "exact density"},
    "ddpm": {"group": "Diffusion", "latent": "none (data space)", "stability": "very stable", "quality": "high",
             "speed": "slow", "trait": "step-by-step denoising"},
    "ldm": {"group": "Diffusion", "latent": "autoencoder latent", "stability": "very stable", "quality": "high",
            "speed": "fast-ish", "trait": "diffusion on a compressed latent"},
    "score": {"group": "Diffusion", "latent": "none (data space); the probability-flow ODE gives an exact one",
              "stability": "very stable", "quality": "high", "speed": "slow",
              "trait": "score matching over noise levels; SDE/ODE samplers, exact likelihood"},
}

# Why a family has no likelihood column, where it declares none.
NO_LIKELIHOOD = {
    "gan": "implicit model: a GAN defines no density to evaluate",
    "vqvae": "no likelihood capability: deterministic codes; the prior models codes, not pixels",
}

TAIL = 0.2  # stability: the last 20% of logged steps


@dataclass
class Settings:
    data: str = "mnist"
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


def na(reason: str) -> dict:
    return {"na": reason, "text": f"n/a ({reason})"}


# -- columns: one model each ----------------------------------------------------------------------

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
    from .bench import generators

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


def read_log(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line.replace("NaN", "null").replace("Infinity", "null")))
            except json.JSONDecodeError:
                continue
    return records


def stability_from_log(records: list[dict], source: str) -> dict:
    """Loss variation over the last part of training, and divergence.

    cv = std / |mean| of the logged loss over the last 20% of logged steps; diverged = a non-finite
    loss, or the tail mean above twice the lowest 5-point moving average reached earlier."""
    pts = [(r["step"], r.get("loss")) for r in records if "step" in r and "loss" in r]
    if len(pts) < 5:
        return na(f"too few logged steps ({len(pts)}) in {source}")
    bad = [s for s, v in pts if v is None or not math.isfinite(v)]
    vals = [(s, v) for s, v in pts if v is not None and math.isfinite(v)]
    k = max(3, int(len(vals) * TAIL))
    tail = [v for _, v in vals[-k:]]
    mean, std = statistics.fmean(tail), statistics.pstdev(tail)
    cv = std / abs(mean) if mean else float("inf")
    ma = [statistics.fmean(v for _, v in vals[i:i + 5]) for i in range(0, max(len(vals) - 4, 1))]
    diverged = bool(bad) or mean > 2 * min(ma) and min(ma) > 0
    first = statistics.fmean(v for _, v in vals[:k])
    out = {"source": source, "logged_steps": len(pts), "last_step": pts[-1][0], "tail_from_step": vals[-k][0],
           "tail_mean": round(mean, 6), "tail_std": round(std, 6), "tail_cv": round(cv, 4),
           "start_mean": round(first, 6), "nonfinite_steps": bad[:10], "diverged": diverged,
           "rule": "cv = std/|mean| of the loss over the last 20% of logged steps; diverged = non-finite loss or "
                   "tail mean > 2x the lowest 5-point moving average"}
    out["text"] = (f"loss cv {cv:.1%} over steps {vals[-k][0]}-{pts[-1][0]}; "
                   + ("DIVERGED" if diverged else "no divergence"))
    return out


def _log_interval(records: list[dict]) -> int:
    steps = [r["step"] for r in records if "step" in r]
    gaps = [b - a for a, b in zip(steps, steps[1:]) if b > a]
    return statistics.median(gaps) if gaps else 1


def find_log(source: str, meta: dict, overrides: dict[str, str]) -> tuple[list[dict] | None, str, str]:
    """The training log behind a model: (records, where, why-not). From --log, the model's run
    folder, or the run folder its recipe names when that folder trained the same config and its
    log reaches the checkpoint's step (records after that step belong to a later checkpoint)."""
    if source in overrides:
        p = Path(overrides[source])
        p = p / "log.jsonl" if p.is_dir() else p
        return (read_log(p), str(p), "") if p.is_file() else (None, "", f"--log {source}={overrides[source]}: no such log")
    p = Path(source)
    if p.is_dir():
        log = p / "log.jsonl"
        return (read_log(log), str(log), "") if log.is_file() else (None, "", f"run folder {source} has no log.jsonl")
    recipe = json.loads(meta.get("gmkit.recipe", "{}") or "{}")
    command, step = recipe.get("command", ""), recipe.get("step")
    parts = command.split()
    flag = next((f for f in ("--out", "--resume") if f in parts[:-1]), None)  # a resumed run writes to its folder
    run = parts[parts.index(flag) + 1] if flag else None
    if not run or not (Path(run) / "log.jsonl").is_file():
        where = f", and its recipe's run folder {run} is not here" if run else ""
        return None, "", f"no training log: none in the checkpoint{where}; give --log or --seeds N"
    log = Path(run) / "log.jsonl"
    model = Path(run) / "model.safetensors"
    if model.is_file():
        from .checkpoint import read_metadata

        theirs = json.loads(read_metadata(model).get("gmkit.config", "{}") or "{}")
        if theirs != json.loads(meta.get("gmkit.config", "{}") or "{}"):
            return None, "", f"the run folder its recipe names ({run}) trained a different config: not this checkpoint's run"
    records = read_log(log)
    if step is not None and records:
        step = int(step)
        kept = [r for r in records if r.get("step", 0) <= step]
        last = kept[-1]["step"] if kept else None
        if last is None or step - last >= _log_interval(records):
            return None, "", (f"the run folder its recipe names ({run}) logs steps {records[0].get('step')}-"
                              f"{records[-1].get('step')}, the checkpoint is from step {step}: not this checkpoint's run")
        records = kept
    return records, f"{log} (named by the checkpoint's recipe; steps up to {step})", ""


def likelihood(net, data, n: int) -> dict:
    if LIKELIHOOD not in net.capabilities:
        return na(net.no_likelihood or f"{net.name} declares no likelihood capability")
    # Diffusion / score models integrate the probability-flow ODE (~50 network calls and backward
    # passes per image): compare evaluates fewer images for them (their ``compare_likelihood_images``).
    x = data.images[:min(n, net.compare_likelihood_images or n)]
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


def score(images: torch.Tensor, reference: str, seeds: str) -> dict:
    from .metrics.evaluate import evaluate

    r = evaluate(images, reference)
    m, b = r["metrics"], r["baseline_real_train_vs_heldout"]
    return {**m, "n": r["n"], "seeds": seeds, "baseline_fd": b["fd"], "baseline_kid": b["kid"],
            "baseline_precision": b["precision"], "baseline_recall": b["recall"], "fd_name": r["names"]["fd"],
            "kid_name": r["names"]["kid"], "confident_share": r["confident_share"],
            "class_histogram": r["class_histogram"], "reference": r["reference"]}


class Column:
    """One model's measurements; ``cells`` maps property -> {text, numbers..., or na}."""

    def __init__(self, source: str):
        self.source = source
        self.cells: dict[str, dict] = {}
        self.images: torch.Tensor | None = None
        self.family: str | None = None
        self.info: dict = {}
        self.log: list[dict] = []


PROPERTIES = ["family", "latent", "stability", "quality", "kid", "precision_recall", "quality_common", "speed",
              "time_per_image", "network_calls", "likelihood", "parameters", "trait"]
LABELS = {"family": "family", "latent": "latent space", "stability": "training stability",
          "quality": "sample quality: FD", "kid": "KID", "precision_recall": "precision / recall",
          "quality_common": "FD at a common n", "speed": "sampling speed", "time_per_image": "time per image",
          "network_calls": "network calls per image", "likelihood": "likelihood", "parameters": "parameters",
          "trait": "distinctive trait (textbook)"}


def measure(source: str, s: Settings, test_data, dev, dt, say: Callable[[str], None]) -> Column:
    from .bench import count_flops, generate, sample_options, warm_up
    from .registry import load

    col = Column(source)
    if _images_folder(source):
        from .imageio import load_image_set

        x, notes = load_image_set(source)
        col.images = x
        col.family = "images"
        col.info = {"kind": "folder of images", "images": len(x), "notes": notes}
        reason = "a folder of images, not a model"
        for p in PROPERTIES:
            col.cells[p] = na(reason)
        col.cells["family"] = {"text": f"images ({len(x)} files)"}
        col.cells["quality"] = _quality_cells(col, x, s, f"files of {source}")
        return col
    try:
        net, src = load(source, dev, dt)
    except GmkitError as e:
        say(f"gmkit: warning: {source}: {e}")
        reason = "unknown model" if "unknown model" in str(e) else str(e)
        for p in PROPERTIES:
            col.cells[p] = na(reason)
        col.info = {"error": str(e)}
        return col
    col.family = net.name
    data_shape = tuple(test_data.images.shape[1:])
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
    col.cells["latent"] = describe_latent(net, test_data.images[:2], test_data.labels[:2] if test_data.labels is not None else None)
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
    col.cells["quality"] = _quality_cells(col, images, s, f"0-{n - 1}")
    if test_data is not None:
        col.cells["likelihood"] = likelihood(net, test_data, s.likelihood_images)
    col.net = net  # kept for the quality-vs-steps sweep; dropped before the report is written
    col.opts = opts
    return col


def _quality_cells(col: Column, images: torch.Tensor, s: Settings, seeds: str) -> dict:
    from .metrics.extractor import EXTRACTORS

    if s.data not in EXTRACTORS:
        reason = f"no gmkit feature extractor for {s.data} (available: {', '.join(EXTRACTORS)})"
        col.cells["kid"] = col.cells["precision_recall"] = na(reason)
        return na(reason)
    finite = torch.isfinite(images).flatten(1).all(1)
    bad = int((~finite).sum())
    if bad:  # a model that emits NaN is measured on the rest, and the table says how many it lost
        images = images[finite]
    try:
        q = score(images, s.data, seeds)
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

def steps_sweep(cols: list[Column], s: Settings, dev, say) -> list[dict]:
    """DDIM at ``sweep_steps`` for each diffusion checkpoint, plus the columns' own points."""
    from .bench import generate

    points, done = [], set()
    for c in cols:
        net = getattr(c, "net", None)
        if net is None or STEPS not in net.capabilities or "fd" not in c.cells["quality"]:
            continue
        q = c.cells["quality"]
        ckpt = c.info["checkpoint"]
        points.append({"checkpoint": ckpt, "model": c.source, "sampler": c.opts["sampler"], "steps": c.opts["steps"],
                       "n": q["n"], "fd": q["fd"], "kid": q["kid"], "baseline_fd": q["baseline_fd"]})
        if ckpt in done or not s.sweep_steps:
            continue
        done.add(ckpt)
        for st in s.sweep_steps:
            sweep_sampler = net.sweep_sampler  # score models have no ddim: heun
            opts = {**c.opts, "sampler": sweep_sampler, "steps": st}
            opts.pop("eta", None)
            say(f"gmkit: compare {c.source}: quality at {sweep_sampler} {st} steps ({s.sweep_samples} samples) ...")
            images, _ = generate(net, opts, s.sweep_samples, min(s.batch_size, s.sweep_samples), dev)
            q2 = score(images, s.data, f"0-{s.sweep_samples - 1}")
            points.append({"checkpoint": ckpt, "model": f"{c.source} (sweep)", "sampler": sweep_sampler, "steps": st,
                           "n": q2["n"], "fd": q2["fd"], "kid": q2["kid"], "baseline_fd": q2["baseline_fd"]})
    return points


def seed_spread(cols: list[Column], s: Settings, dev, workdir: Path, say) -> dict:
    """Train ``s.seeds`` short runs per family (default config, --train-steps) and score each."""
    from .bench import generate, sample_options
    from .config import TrainConfig, from_dict, to_dict
    from .data import load_data
    from .families import get_family
    from .families.base import TrainSetup
    from .loop import train
    from .registry import load

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
            q = score(images, s.data, f"0-{s.seed_samples - 1}")
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


def compare(models: list[str], s: Settings, say: Callable[[str], None] = lambda m: None,
            workdir: Path | None = None) -> tuple[dict, list[Column]]:
    from .data import load_data
    from .metrics.extractor import EXTRACTORS

    t_start = time.perf_counter()
    dev = torch.device(s.device)
    dt = getattr(torch, s.dtype)
    try:
        test_data = load_data(s.data, "test")
    except GmkitError as e:
        raise GmkitError(f"--data {s.data}: {e}") from None
    cols = [measure(m, s, test_data, dev, dt, say) for m in models]
    # The same n for every model: FD is biased by the sample count, KID is not.
    ns = [c.cells["quality"]["n"] for c in cols if "n" in c.cells.get("quality", {})]
    common = min(ns) if ns else None
    for c in cols:
        q = c.cells.get("quality", {})
        if common and "n" in q and c.images is not None:
            if q["n"] == common:
                c.cells["quality_common"] = {"n": common, "fd": q["fd"], "baseline_fd": q["baseline_fd"],
                                             "text": f"{q['fd']:.2f} (n={common}; real {q['baseline_fd']:.2f})"}
            else:
                finite = c.images[torch.isfinite(c.images).flatten(1).all(1)]
                qc = score(finite[:common], s.data, f"first {common} finite of 0-{q['n'] - 1}")
                c.cells["quality_common"] = {"n": common, "fd": qc["fd"], "baseline_fd": qc["baseline_fd"],
                                             "text": f"{qc['fd']:.2f} (n={common}; real {qc['baseline_fd']:.2f})"}
        elif "quality_common" not in c.cells:
            c.cells["quality_common"] = dict(c.cells.get("quality", na("no samples")))
    sweep = steps_sweep(cols, s, dev, say) if s.data in EXTRACTORS else []
    seeds = {}
    if s.seeds:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gmkit-compare-") as tmp:
            seeds = seed_spread(cols, s, dev, Path(workdir or tmp) / "seed-runs", say)
        for c in cols:
            sp = seeds.get(c.family)
            if sp:
                st = c.cells.get("stability", {})
                extra = (f"FD {sp['fd_mean']:.1f} ± {sp['fd_std']:.1f} over {len(sp['runs'])} seeds "
                         f"({sp['train_steps']} steps)" if "fd_mean" in sp else f"{sp['diverged']} of {len(sp['runs'])} seeds diverged")
                base = {"log_na": st["na"]} if "na" in st else st
                c.cells["stability"] = {**base, "seeds": sp, "text": (st["text"] + "; ") + extra}
    for c in cols:
        for p in PROPERTIES:
            c.cells.setdefault(p, na("not measured"))
    report = {
        "title": "gmkit compare: the textbook table of generative families, measured",
        "data": {"name": s.data, "reference": f"{s.data} held-out split ({len(test_data)} images)",
                 "note": getattr(test_data, "note", "")},
        "settings": asdict(s),
        "models": [{"source": c.source, "family": c.family, "info": c.info, "cells": c.cells} for c in cols],
        "quality_vs_steps": sweep,
        "seed_spread": seeds,
        "common_n": common,
        "environment": environment(dev),
        "seconds": round(time.perf_counter() - t_start, 1),
        "notes": [
            "Image i of every model comes from seed i (seeds 0..n-1); sample counts per model in models[].info.samples.",
            f"Configurations with more than {s.slow_steps} network calls per image get {s.slow_samples} samples "
            f"(--slow-samples) instead of {s.samples}, to keep the run short: their FD is noisier and biased upward; "
            "compare them on 'FD at a common n' and on KID (unbiased in n).",
            "FD-gmkit-mnist and KID-gmkit-mnist use gmkit's own MNIST feature extractor, not InceptionV3: "
            "they are not comparable with published FID.",
            "Sampling speed: median seconds per full batch after one warm-up, on the device below, "
            "measured while generating the quality samples.",
            "Training stability: loss statistics of the model's own training log where one is available; "
            "loss scales differ by family, so compare the cv and divergence, not the loss values. "
            "With --seeds N: spread of final FD over N short training runs of the family's default config.",
        ],
    }
    report["claims"] = textbook_claims(report)
    for c in cols:
        for attr in ("net", "opts"):
            if hasattr(c, attr):
                delattr(c, attr)
    return report, cols


def environment(dev) -> dict:
    return {"gmkit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(dev), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "platform": platform.platform()}


# -- outputs ---------------------------------------------------------------------------------------

def table_rows(report: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    heads = [m["source"] for m in report["models"]]
    rows = []
    for p in PROPERTIES:
        cells = [m["cells"].get(p, {}).get("text", "n/a") for m in report["models"]]
        if p == "quality_common" and report.get("common_n") is None:
            continue
        label = LABELS[p]
        if p == "quality":
            label = f"sample quality: {next((m['cells']['quality'].get('fd_name') for m in report['models'] if 'fd_name' in m['cells']['quality']), 'FD')}"
        if p == "quality_common" and report.get("common_n"):
            label = f"FD at common n={report['common_n']}"
        rows.append((label, cells))
    return heads, rows


def sample_sheet(cols: list[Column], path: Path, per_model: int = 16, scale: int = 3) -> None:
    """Side by side: the first ``per_model`` samples of every model, labelled."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .imageio import make_grid

    nrow = int(math.ceil(math.sqrt(per_model)))
    tiles = []
    for c in cols:
        if c.images is not None and len(c.images):
            x = c.images[:per_model].nan_to_num(0.0)
            if x.shape[-1] < 28:
                x = torch.nn.functional.interpolate(x, size=(28, 28), mode="nearest")
            g = make_grid(x, nrow=nrow)
            g = np.repeat(np.repeat(g, scale, 0), scale, 1)
            im = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).convert("RGB")
        else:
            im = Image.new("RGB", (nrow * 30 * scale + 2, nrow * 30 * scale + 2), (200, 200, 200))
            reason = c.cells.get("family", {}).get("na", "no samples")
            ImageDraw.Draw(im).text((10, im.height // 2), f"n/a: {reason}"[:60], fill=(90, 90, 90))
        tiles.append((c.source, im))
    h = max(t.height for _, t in tiles) + 22
    w = sum(t.width for _, t in tiles) + 8 * (len(tiles) + 1)
    sheet = Image.new("RGB", (w, h + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = 8
    for name, t in tiles:
        label = Path(name).name if ("/" in name or "\\" in name) else name
        draw.text((x, 4), label[:40], fill=(0, 0, 0))
        sheet.paste(t, (x, 20))
        x += t.width + 8
    sheet.save(path)


def plot_quality_vs_steps(points: list[dict], path: Path) -> bool:
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    by: dict = {}
    for p in points:
        by.setdefault((Path(p["checkpoint"]).name, p["sampler"]), []).append(p)
    for (ck, smp), ps in sorted(by.items()):
        ps = sorted(ps, key=lambda p: p["steps"])
        label = f"{smp} ({ck})"
        a1.plot([p["steps"] for p in ps], [p["fd"] for p in ps], "o-", label=label)
        a2.plot([p["steps"] for p in ps], [p["kid"] for p in ps], "o-", label=label)
        for p in ps:
            a1.annotate(f"n={p['n']}", (p["steps"], p["fd"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    base = statistics.median(p["baseline_fd"] for p in points)
    a1.axhline(base, color="grey", ls="--", lw=1, label="real-vs-real (median n)")
    for ax, t in ((a1, "FD-gmkit-mnist (biased by n)"), (a2, "KID-gmkit-mnist (unbiased in n)")):
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps (network calls per image)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle("diffusion: quality against steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_losses(cols: list[Column], path: Path) -> bool:
    logged = [c for c in cols if c.log]
    if not logged:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(logged)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.2), squeeze=False)
    for ax, c in zip(axes[0], logged):
        pts = [(r["step"], r["loss"]) for r in c.log if isinstance(r.get("loss"), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        tail_from = c.cells["stability"].get("tail_from_step")
        if tail_from is not None:
            ax.axvspan(tail_from, pts[-1][0], color="orange", alpha=0.15, label="last 20%")
            ax.legend(fontsize=7)
        ax.set_title(f"{Path(c.source).name} ({c.family})", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_html(report: dict, images: dict[str, Path], path: Path) -> None:
    """One self-contained page: the table, the sheet and the plots inlined (no network)."""
    from html import escape

    heads, rows = table_rows(report)
    th = "".join(f"<th>{escape(h)}</th>" for h in heads)
    body = "".join(
        f"<tr><th class='prop'>{escape(label)}</th>" + "".join(
            f"<td class='{'na' if c.startswith('n/a') else ''}'>{escape(c)}</td>" for c in cells) + "</tr>"
        for label, cells in rows)
    figs = "".join(f"<figure><img alt='{escape(k)}' src='{_data_uri(p)}'><figcaption>{escape(k)}</figcaption></figure>"
                   for k, p in images.items())
    env = report["environment"]
    samples = "".join(f"<li>{escape(m['source'])}: {escape(str(m['info'].get('sample_note', m['info'].get('error', '-'))))}</li>"
                      for m in report["models"])
    notes = "".join(f"<li>{escape(n)}</li>" for n in report["notes"])
    claims = "".join(f"<li><b>{escape(c['claim'])}</b>: {escape(c['verdict'])} &mdash; {escape(c['evidence'])}</li>"
                     for c in report.get("claims", []))
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(report['title'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
th.prop {{ background: #f4f4f4; white-space: nowrap; }}
td.na {{ color: #999; }}
figure {{ display: inline-block; margin: 1em 1em 0 0; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{escape(report['title'])}</h1>
<p>Data: {escape(report['data']['name'])} &mdash; {escape(report['data']['reference'])}. {escape(report['data']['note'] or '')}</p>
<table><tr><th></th>{th}</tr>{body}</table>
<h2>Textbook claims on this data</h2><ul>{claims or '<li>none evaluated</li>'}</ul>
<h2>Samples and plots</h2>{figs}
<h2>Sample counts</h2><ul>{samples}</ul>
<h2>Notes</h2><ul>{notes}</ul>
<p>gmkit {escape(env['gmkit'])}, torch {escape(env['torch'])}, device {escape(env['device'])}
({escape(str(env['threads']))} threads, {escape(str(env['cpu']))}{', ' + escape(env['gpu']) if env.get('gpu') else ''}),
{escape(str(report['seconds']))} s in all.</p>
</body></html>
"""
    path.write_text(html, encoding="utf-8")


def textbook_claims(report: dict) -> list[dict]:
    """The textbook's cells turned into checks against the measured table (where both sides exist)."""
    ms = [m for m in report["models"] if m["family"] not in (None, "images")]
    claims = []

    def speed(m):
        return m["cells"]["speed"].get("images_per_s")

    def kid(m):
        return m["cells"]["quality"].get("kid")

    diff = [m for m in ms if m["family"] == "ddpm" and speed(m)]
    one = [m for m in ms if m["family"] != "ddpm" and speed(m)]
    if diff and one:
        slow = min(diff, key=speed)
        fast = min(one, key=speed)
        claims.append({"claim": "diffusion samples slowly, the others fast",
                       "verdict": "holds" if speed(slow) < speed(fast) else "does not hold",
                       "evidence": f"slowest diffusion ({slow['source']}) {speed(slow):.2f} images/s vs slowest other "
                                   f"({fast['source']}) {speed(fast):.1f} images/s ({speed(fast) / speed(slow):.0f}x)"})
    scored = [m for m in ms if kid(m) is not None]
    if len(scored) >= 2:
        order = sorted(scored, key=kid)
        claims.append({"claim": "GAN and diffusion give the best samples, VAE and flow medium",
                       "verdict": "see ranking",
                       "evidence": "ranking by KID (lower is better): " + ", ".join(f"{m['source']} {kid(m):.4f}" for m in order)})
    lik = [m for m in ms if "value" in m["cells"]["likelihood"]]
    if lik:
        claims.append({"claim": "flows have an exact density",
                       "verdict": "holds" if any(m["family"] == "flow" and "exact" in m["cells"]["likelihood"]["text"] for m in lik)
                       else "only bounds measured",
                       "evidence": "; ".join(f"{m['source']}: {m['cells']['likelihood']['text']}" for m in lik)})
    stab = [m for m in ms if "tail_cv" in m["cells"]["stability"] or "seeds" in m["cells"]["stability"]]
    if stab:
        claims.append({"claim": "GANs train unstably, VAEs stably, diffusion very stably",
                       "verdict": "see evidence",
                       "evidence": "; ".join(f"{m['source']}: {m['cells']['stability']['text']}" for m in stab)})
    return claims


def write_report(report: dict, cols: list[Column], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"samples (first 16 of each model, seeds 0-15)": out / "samples.png"}
    sample_sheet(cols, files["samples (first 16 of each model, seeds 0-15)"])
    if plot_quality_vs_steps(report["quality_vs_steps"], out / "quality_vs_steps.png"):
        files["diffusion: quality against steps"] = out / "quality_vs_steps.png"
    if plot_losses(cols, out / "training_loss.png"):
        files["training loss (from each run's log.jsonl)"] = out / "training_loss.png"
    report["files"] = {k: str(v) for k, v in files.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_html(report, files, out / "index.html")
    return files
