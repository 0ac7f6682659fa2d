"""DDIM against DDPM on the same network: sample quality and time against step count, one run.

Quality: FD-gmkit-mnist, KID and precision/recall over gmkit's shipped MNIST feature extractor
(a small CNN classifier, not InceptionV3, so not FID), against the 500 held-out MNIST images,
printed beside the real-vs-real baseline (as many training images against the same held-out set).

    OMP_NUM_THREADS=2 python benchmarks/ddim_vs_ddpm.py --model ddpm --n 256 \
        --out benchmarks/results/ddim_vs_ddpm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gmkit.metrics.evaluate import evaluate
from gmkit.registry import load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--ddim-steps", default="10,20,50,100")
    p.add_argument("--ddpm-steps", default="1000")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    net, _ = load(args.model)
    runs = [("ddpm", int(s)) for s in args.ddpm_steps.split(",") if s] + \
           [("ddim", int(s)) for s in args.ddim_steps.split(",") if s]
    rows, baseline = [], None
    for sampler, steps in runs:
        t = time.perf_counter()
        chunks = []
        for start in range(0, args.n, args.batch):
            gens = [torch.Generator().manual_seed(i) for i in range(start, min(start + args.batch, args.n))]
            chunks.append(net.sample(gens, sampler=sampler, steps=steps))
        secs = time.perf_counter() - t
        res = evaluate(torch.cat(chunks), "mnist")
        baseline = res["baseline_real_train_vs_heldout"]
        row = {"sampler": sampler, "steps": steps, "n": args.n, **res["metrics"],
               "confident_share": res["confident_share"], "seconds": round(secs, 2),
               "images_per_s": round(args.n / secs, 3), "network_evals": steps}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"baseline_real_train_vs_heldout": baseline}))
    result = {"model": args.model, "metric": "FD-gmkit-mnist (gmkit's MNIST CNN features)", "baseline": baseline,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
