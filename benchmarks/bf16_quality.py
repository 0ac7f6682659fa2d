"""What bf16 costs in quality on a CPU with native bf16: sampling and training, against fp32.

Sampling: the bundled ``ddpm`` with DDIM-50, ``--n`` images (seeds 0..n-1) in fp32 and in bf16
(``gmkit sample --dtype bf16``: bf16 weights and activations), same seeds. Reported: the
per-pixel difference of paired images (in [-1, 1], and in 8-bit levels after writing), FD-gmkit-mnist
of each set against the held-out split, and the FD between the two sets.

Training: ``--train-steps`` steps of the bundled architecture from the same seed and batches, in
fp32 and with bf16 autocast (``--set train.cpu_amp=true``); reported: the training loss curves
(means over 20 steps) and the mean over the last quarter of the steps, per precision.

    OMP_NUM_THREADS=1 python benchmarks/bf16_quality.py      # -> benchmarks/results/bf16_quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gmkit import runtime  # noqa: E402
from gmkit.data import load_data  # noqa: E402
from gmkit.metrics.distances import frechet_distance  # noqa: E402
from gmkit.metrics.evaluate import evaluate  # noqa: E402
from gmkit.metrics.mnist import extract, load_extractor  # noqa: E402
from gmkit.registry import load  # noqa: E402


def sample(model, n: int, batch: int = 100) -> torch.Tensor:
    out = []
    for s in range(0, n, batch):
        gens = [torch.Generator().manual_seed(i) for i in range(s, min(n, s + batch))]
        out.append(model.sample(gens, sampler="ddim", steps=50).float().cpu())
    return torch.cat(out)


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """What an image file holds: [-1, 1] -> 0..255 (gmkit.imageio's rounding)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def sampling_check(n: int) -> dict:
    rows = {}
    images = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, _ = load("ddpm", "cpu", dtype)
        t0 = time.perf_counter()
        images[name] = sample(model, n)
        rows[name] = {"seconds": round(time.perf_counter() - t0, 1), **evaluate(images[name])["metrics"]}
        print(name, rows[name], file=sys.stderr, flush=True)
    a, b = images["fp32"], images["bf16"]
    la, lb = to_levels(a), to_levels(b)
    net = load_extractor("mnist")
    fa, fb = (extract(net, x)[1].double().numpy() for x in (a, b))
    return {"n": n, "sampler": "ddim", "steps": 50, "per_precision": rows,
            "paired_difference": {"mean_abs": round(float((a - b).abs().mean()), 5),
                                  "max_abs": round(float((a - b).abs().max()), 4),
                                  "mean_abs_8bit_levels": round(float((la - lb).abs().mean()), 4),
                                  "share_of_pixels_changed_by_more_than_2_levels": round(float(((la - lb).abs() > 2).float().mean()), 5)},
            "fd_fp32_vs_bf16_sets": round(frechet_distance(fa, fb), 4)}


def training_check(steps: int, batch: int = 64) -> dict:
    from gmkit.families.ddpm import DDPM

    images = load_data("mnist", "train").images()  # 4,500 images: small enough to hold as floats
    out = {}
    for name, amp in (("fp32", False), ("bf16-autocast", True)):
        fresh, _ = load("ddpm", "cpu")
        torch.manual_seed(0)
        model = DDPM(fresh.config).to(memory_format=torch.channels_last).train()  # same initial weights (seed 0)
        opt = model.optimizers(1e-3, 0.0)
        torch.manual_seed(1)
        losses = []
        t0 = time.perf_counter()
        for step in range(steps):
            idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(step))[:batch]  # same batches for both
            b = {"image": images[idx].contiguous(memory_format=torch.channels_last)}
            for g in opt["model"].param_groups:
                g["lr"] = 1e-3 * min(1.0, (step + 1) / 200)
            with runtime.autocast("cpu", "bf16" if amp else "fp32"):
                losses.append(model.train_step(model, b, opt, step, 1.0)["loss"])
        seconds = time.perf_counter() - t0
        tail = losses[-max(1, steps // 4):]
        out[name] = {"seconds": round(seconds, 1), "mean_loss_last_quarter": round(sum(tail) / len(tail), 5),
                     "loss_every_20_steps": [round(sum(losses[i:i + 20]) / len(losses[i:i + 20]), 4)
                                             for i in range(0, steps, 20)]}
        print(name, out[name], file=sys.stderr, flush=True)
    return {"steps": steps, "batch": batch, "lr": 1e-3, "per_precision": out}


def main() -> None:
    ap = argparse.ArgumentParser(description="bf16 vs fp32 quality on this CPU")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=120)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bf16_quality.json"))
    args = ap.parse_args()
    result = {"cpu_native_bf16": runtime.cpu_has_native_bf16(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "sampling": sampling_check(args.n)}
    if args.train_steps:
        result["training"] = training_check(args.train_steps)
    result["command"] = "OMP_NUM_THREADS=1 python benchmarks/bf16_quality.py " + " ".join(sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
