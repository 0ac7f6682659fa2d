"""Time to quality: gmkit's training recipe against a diffusers-example loop, MNIST, FD against CPU time.

Both sides train the same network (the bundled DDPM's UNet: 1.1M parameters, 28x28, fresh weights)
on the same data (the 4,500-image MNIST training split) at the same batch (64), one thread each:

    diffusers  the loop of diffusers' examples/unconditional_image_generation/train_unconditional.py
               as its train.sh runs it (--use_ema --learning_rate 1e-4 --lr_warmup_steps 500), with the
               script's other defaults: DDPMScheduler(1000, linear), epsilon target, MSE, AdamW
               (betas 0.95/0.999, weight decay 1e-6), cosine decay over the planned steps, gradient
               clipping at 1.0, EMAModel (inv_gamma 1, power 3/4, max decay 0.9999). Run at its best
               setting on this hardware: bf16 autocast (--mixed_precision bf16) where the CPU has native
               bf16. The data is handed over as one tensor, so its per-image transforms cost nothing.
    gmkit      ``gmkit.train("ddpm", "mnist", ...)``, the same call as ``gmkit train ddpm --data mnist``,
               with the recipe chosen for speed to quality (``RECIPE`` below), resumed exactly in stages
               so that snapshots can be kept; the resumes' own overhead is counted against gmkit.

The time axis is the training process's CPU time (``time.process_time``), not wall time: both sides
can run at once on a shared machine, and a loaded core slows neither's clock. Each side keeps its
(EMA) weights at marks of CPU time; ``--evaluate`` samples every snapshot the same way (gmkit's DDIM,
``--eval-steps`` steps, ``--eval-n`` images, seeds 0..n-1) and scores it with FD over gmkit's MNIST
extractor against the held-out split, beside the real-vs-real baseline at that n.

    OMP_NUM_THREADS=1 python benchmarks/time_to_quality.py --side diffusers --minutes 60 &
    OMP_NUM_THREADS=1 python benchmarks/time_to_quality.py --side gmkit --minutes 25
    OMP_NUM_THREADS=1 python benchmarks/time_to_quality.py --evaluate
    OMP_NUM_THREADS=1 python benchmarks/time_to_quality.py --report   # JSON + curve PNG

Writes benchmarks/results/time_to_quality.json and docs/images/time_to_quality.png.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gmkit import runtime  # noqa: E402
from gmkit.checkpoint import load_tensors, save_tensors  # noqa: E402
from gmkit.config import to_dict  # noqa: E402
from gmkit.families.ddpm import DDPM  # noqa: E402
from gmkit.registry import load  # noqa: E402

BATCH = 64
RECIPE = {  # gmkit's side: what `gmkit train ddpm --data mnist --batch-size 64 --set ...` runs
    "lr": 1e-3,  # gmkit's default for this family; warm-up 200 steps, then constant
    # min-SNR-5 (Hang et al. 2023), bf16 autocast where native, and an EMA short enough for a short run
    "overrides": ["loss_weighting=min_snr", "min_snr_gamma=5", "train.cpu_amp=true", "train.ema_decay=0.995"],
}
WORK = ROOT / "runs" / "time_to_quality"
RESULT = ROOT / "benchmarks" / "results" / "time_to_quality.json"
PLOT = ROOT / "docs" / "images" / "time_to_quality.png"


def base_config():
    """The bundled ddpm's config: the network both sides train from fresh weights."""
    model, _ = load("ddpm", "cpu")
    return model.config


def trace_path(side: str) -> Path:
    return WORK / side / "trace.json"


def save_trace(side: str, rows: list[dict], meta: dict) -> None:
    path = trace_path(side)
    path.write_text(json.dumps({"meta": meta, "snapshots": rows}, indent=1))


def marks(minutes: float, every: float) -> list[float]:
    return [every * 60 * (i + 1) for i in range(int(math.ceil(minutes / every)))]


# -- the diffusers side ------------------------------------------------------------------------------

def train_diffusers(minutes: float, every: float, seed: int) -> None:
    import diffusers
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from vs_diffusers import diffusers_config_of
    from gmkit.data.core import load_data

    diffusers.utils.logging.set_verbosity_error()
    cfg = base_config()
    images = load_data("mnist", "train").images()
    torch.manual_seed(seed)
    unet = UNet2DModel(**diffusers_config_of(cfg.unet)).train()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    bf16 = runtime.cpu_has_native_bf16()
    out = WORK / "diffusers"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def step_once(batch: torch.Tensor) -> float:
        noise = torch.randn_like(batch)
        t = torch.randint(0, 1000, (batch.shape[0],))
        noisy = sched.add_noise(batch, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(noisy, t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        return float(loss.detach())

    # The example's cosine schedule needs its total steps: plan them from the measured step rate.
    g = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(images), generator=g), 0
    lr_sched = get_cosine_schedule_with_warmup(opt, 500, 10**9)
    cpu0, step, rows, todo = time.process_time(), 0, [], marks(minutes, every)
    planned = None
    while todo:
        if pos + BATCH > len(order):  # the example's DataLoader: reshuffle each epoch, drop nothing
            order, pos = torch.randperm(len(images), generator=g), 0
        loss = step_once(images[order[pos:pos + BATCH]])
        pos += BATCH
        step += 1
        cpu = time.process_time() - cpu0
        if planned is None and step == 30:
            planned = int(minutes * 60 / cpu * step)
            lr_sched = get_cosine_schedule_with_warmup(opt, 500, planned, last_epoch=step - 1)
        if cpu >= todo[0]:
            todo.pop(0)
            shadow = UNet2DModel(**diffusers_config_of(cfg.unet))
            ema.copy_to(shadow.parameters())
            name = f"cpu_{int(cpu):05d}.safetensors"
            save_tensors(out / name, {f"unet.{k}": v for k, v in shadow.state_dict().items()},
                             {"gmkit.family": "ddpm", "gmkit.config": json.dumps(to_dict(cfg))})
            rows.append({"step": step, "cpu_s": round(cpu, 1), "loss": round(loss, 5), "file": name})
            save_trace("diffusers", rows, {"planned_steps": planned, "bf16_autocast": bf16, "lr": 1e-4, "ema": True})
            print(f"diffusers: step {step}, {cpu / 60:.1f} CPU min, loss {loss:.4f}", flush=True)


# -- the gmkit side ----------------------------------------------------------------------------------

def train_gmkit(minutes: float, every: float, seed: int) -> None:
    from gmkit.training import train

    cfg = to_dict(base_config())
    out = WORK / "gmkit"
    shutil.rmtree(out, ignore_errors=True)
    run = out / "run"
    cpu0, rows, steps, per_step = time.process_time(), [], 0, None
    for mark in marks(minutes, every):
        # Each stage trains to the step its CPU mark is expected at, then resumes exactly where it stopped.
        used = time.process_time() - cpu0
        target = steps + 100 if per_step is None else steps + max(int((mark - used) / per_step), 1)
        summary = train("ddpm", "mnist", run, steps=target, batch_size=BATCH, lr=RECIPE["lr"], seed=seed,
                        config=cfg if steps == 0 else None, overrides=RECIPE["overrides"] if steps == 0 else (),
                        resume=run if steps else None, checkpoint_every=10**9, workers=0, quiet=True,
                        command="benchmarks/time_to_quality.py --side gmkit")
        done = time.process_time() - cpu0
        per_step = (done - used) / max(summary["steps_this_run"], 1)
        steps = summary["step"]
        name = f"cpu_{int(done):05d}.safetensors"
        shutil.copy(run / "model.safetensors", out / name)
        rows.append({"step": steps, "cpu_s": round(done, 1), "file": name})
        save_trace("gmkit", rows, {"recipe": RECIPE, "batch_size": BATCH})
        print(f"gmkit: step {steps}, {done / 60:.1f} CPU min", flush=True)


# -- evaluation and report ---------------------------------------------------------------------------

def evaluate_all(n: int, steps: int) -> None:
    from gmkit.metrics.evaluate import evaluate

    cfg = base_config()
    for side in ("diffusers", "gmkit"):
        if not trace_path(side).exists():
            continue
        trace = json.loads(trace_path(side).read_text())
        for row in trace["snapshots"]:
            if row.get("eval", {}).get("n") == n and row["eval"].get("steps") == steps:
                continue
            model = DDPM(cfg)
            tensors, _ = load_tensors(WORK / side / row["file"])
            model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
            model.eval()
            imgs = []
            with torch.inference_mode():
                for lo in range(0, n, 64):
                    gens = [torch.Generator().manual_seed(i) for i in range(lo, min(n, lo + 64))]
                    imgs.append(model.sample(gens, sampler="ddim", steps=steps))
            res = evaluate(torch.cat(imgs), "mnist")
            row["eval"] = {"n": n, "steps": steps, "fd": round(res["metrics"]["fd"], 3),
                           "baseline_fd": round(res["baseline_real_train_vs_heldout"]["fd"], 3)}
            save_trace(side, trace["snapshots"], trace["meta"])
            print(f"{side} {row['file']}: FD {row['eval']['fd']:.2f} (real-vs-real {row['eval']['baseline_fd']:.2f})",
                  flush=True)


def first_time_below(rows: list[dict], fd: float) -> float | None:
    for r in rows:
        if "eval" in r and r["eval"]["fd"] <= fd:
            return r["cpu_s"]
    return None


def report() -> None:
    traces = {s: json.loads(trace_path(s).read_text()) for s in ("diffusers", "gmkit") if trace_path(s).exists()}
    d_rows = [r for r in traces["diffusers"]["snapshots"] if "eval" in r]
    g_rows = [r for r in traces["gmkit"]["snapshots"] if "eval" in r]
    target = d_rows[-1]["eval"]["fd"]  # the diffusers loop's quality at the end of its budget
    best_d = min(r["eval"]["fd"] for r in d_rows)
    reached = first_time_below(g_rows, target)
    result = {
        "hardware": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                     "native_bf16": runtime.cpu_has_native_bf16(), "torch": torch.__version__},
        "diffusers_final": {"cpu_min": round(d_rows[-1]["cpu_s"] / 60, 2), "fd": target, "best_fd": best_d},
        "gmkit_minutes_to_diffusers_final": None if reached is None else round(reached / 60, 2),
        "speedup_to_quality": None if reached is None else round(d_rows[-1]["cpu_s"] / reached, 2),
        "curves": {s: [{k: r[k] for k in ("step", "cpu_s")} | r["eval"] for r in rows]
                   for s, rows in (("diffusers", d_rows), ("gmkit", g_rows))},
        "meta": {s: t["meta"] for s, t in traces.items()},
        "command": "benchmarks/time_to_quality.py (module docstring)",
    }
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("diffusers_final", "gmkit_minutes_to_diffusers_final",
                                                 "speedup_to_quality")}))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for side, rows in (("diffusers example loop", d_rows), ("gmkit recipe", g_rows)):
        ax.plot([r["cpu_s"] / 60 for r in rows], [r["eval"]["fd"] for r in rows], marker="o", label=side)
    ax.axhline(d_rows[-1]["eval"]["baseline_fd"], color="grey", ls="--", label="real vs real")
    ax.set_xlabel("training CPU minutes (one thread)")
    ax.set_ylabel(f"FD-gmkit-mnist ({d_rows[-1]['eval']['n']} samples)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", choices=("diffusers", "gmkit"))
    p.add_argument("--minutes", type=float, default=60.0, help="CPU minutes of training")
    p.add_argument("--every", type=float, default=5.0, help="CPU minutes between snapshots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluate", action="store_true")
    p.add_argument("--eval-n", type=int, default=256)
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.side == "diffusers":
        train_diffusers(a.minutes, a.every, a.seed)
    elif a.side == "gmkit":
        train_gmkit(a.minutes, a.every, a.seed)
    if a.evaluate:
        evaluate_all(a.eval_n, a.eval_steps)
    if a.report:
        report()


if __name__ == "__main__":
    main()
