"""Super-resolution against bicubic upsampling on held-out OpenMoji: PSNR and SSIM, and a grid to look at.

The held-out emoji (``openmoji:test``, every 10th, never seen in training) are rendered at
``--image-size``, degraded as training degrades them (bicubic downsampling with antialiasing, by the
model's scale) and upsampled back by bicubic, nearest and the model; each is scored against the original.

    OMP_NUM_THREADS=1 python benchmarks/sr_vs_bicubic.py --model sr --n 64 --steps 20 \
        --out benchmarks/results/sr_vs_bicubic.json --grid docs/images/sr_grid.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gmkit.data import load_data
from gmkit.families.sr import degrade, upsample
from gmkit.imageio import make_grid, to_pil
from gmkit.metrics.restoration import psnr, ssim
from gmkit.registry import load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="sr")
    p.add_argument("--data", default="openmoji:test")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--n", type=int, default=64, help="held-out images scored (the first n)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default=None)
    p.add_argument("--grid", default=None, help="PNG: rows of low-res (nearest), bicubic, model, original")
    args = p.parse_args()

    torch.set_grad_enabled(False)
    net, _ = load(args.model)
    scale = net.config.scale
    high = load_data(args.data, image_size=args.image_size).images(args.n)
    low = degrade(high, scale)
    t0 = time.perf_counter()
    outs = []
    for i in range(0, len(low), args.batch):
        chunk = low[i:i + args.batch]
        gens = [torch.Generator().manual_seed(i + j) for j in range(len(chunk))]
        outs.append(net.sample(gens, image=chunk, sampler=args.sampler, steps=args.steps))
    model_out = torch.cat(outs)
    seconds = time.perf_counter() - t0
    results = {"model": args.model, "data": args.data, "images": len(high), "size": f"{low.shape[-1]} -> {high.shape[-1]}",
               "scale": scale, "sampler": args.sampler, "steps": args.steps, "seconds_per_image": round(seconds / len(high), 3)}
    for name, x in (("nearest", upsample(low, scale, "nearest")), ("bicubic", upsample(low, scale, "bicubic")),
                    ("sr", model_out)):
        results[name] = {"psnr_db": round(float(psnr(x, high).mean()), 3), "ssim": round(float(ssim(x, high).mean()), 4)}
        results[name]["wins_psnr_vs_bicubic"] = int((psnr(x, high) > psnr(upsample(low, scale), high)).sum())
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.grid:
        k = min(8, len(high))
        rows = [upsample(low[:k], scale, "nearest"), upsample(low[:k], scale), model_out[:k], high[:k]]
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        to_pil(make_grid(torch.cat(rows), nrow=k)).save(args.grid)


if __name__ == "__main__":
    main()
