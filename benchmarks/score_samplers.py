"""Sample quality against network evaluations (NFE) for any samplers and schedules, one run.

Quality: FD-gmkit-mnist over gmkit's shipped MNIST feature extractor (a small CNN, not InceptionV3,
so not FID) against the 500 held-out MNIST images, beside the real-vs-real baseline. Every
configuration samples the same seeds 0..n-1. The first 64 images of each go to a grid.

    OMP_NUM_THREADS=1 python benchmarks/score_samplers.py --model ddpm --n 500 \
        --runs ddim:5,ddim:10,ddim:20,ddim:50,heun:3,heun:6,heun:10,heun:18 \
        --grids docs/images --out benchmarks/results/heun_vs_ddim.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gmkit.diffusion.samplers import network_calls
from gmkit.imageio import save_images
from gmkit.metrics.evaluate import evaluate
from gmkit.registry import load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm")
    p.add_argument("--runs", default="ddim:10,heun:6", help="sampler:steps[:schedule],... (schedule: the sampler's default)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--grids", default=None, help="folder for a 64-image grid per run")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    net, _ = load(args.model)
    rows = []
    for item in args.runs.split(","):
        sampler, steps, *schedule = item.split(":")
        steps, schedule = int(steps), (schedule[0] if schedule else None)
        t = time.perf_counter()
        chunks = []
        for start in range(0, args.n, args.batch):
            gens = [torch.Generator().manual_seed(i) for i in range(start, min(start + args.batch, args.n))]
            chunks.append(net.sample(gens, sampler=sampler, steps=steps, schedule=schedule).float().cpu())
        x = torch.cat(chunks)
        seconds = time.perf_counter() - t
        m = evaluate(x, "mnist")
        row = {"model": args.model, "sampler": sampler, "schedule": schedule or "default", "steps": steps,
               "nfe": network_calls(sampler, steps), "n": args.n,
               "fd": m["metrics"]["fd"], "kid": m["metrics"]["kid"], "precision": m["metrics"]["precision"],
               "recall": m["metrics"]["recall"], "baseline_fd": m["baseline_real_train_vs_heldout"]["fd"],
               "confident_share": m["confident_share"], "seconds": round(seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.grids:
            save_images(x[:64], str(Path(args.grids) / f"{args.model}-{sampler}-{steps}{'-' + schedule if schedule else ''}.png"))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
