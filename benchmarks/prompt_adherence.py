"""Prompt adherence of a text-to-image model against guidance, measured with TIS (not CLIP).

    OMP_NUM_THREADS=1 python benchmarks/prompt_adherence.py --model ldm --guidance 1,3,5,8 \
        --out benchmarks/results/prompt_adherence.json

For each guidance scale: one image per prompt (seed = prompt index) for 64 OpenMoji names drawn
with a fixed seed from the scorer's training split, and the TIS figures (gmkit/metrics/text_image.py): mean cosine similarity of an
image with its prompt, and top-1 retrieval (does the image pick its own prompt out of the 64).
The same figures for the real renders of those emoji are the ceiling; shuffled pairs the floor.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmkit.data import load_data  # noqa: E402
from gmkit.metrics.text_image import adherence, load_scorer  # noqa: E402
from gmkit.registry import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ldm")
    ap.add_argument("--guidance", default="1,3,5,8")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=None)
    ap.add_argument("--grid", default=None, help="also save each guidance's images as GRID_g{scale}.png")
    args = ap.parse_args()
    data = load_data("openmoji")  # the scorer's training split: the prompts it reads reliably
    names = [c[0] for c in data.captions]
    rng = random.Random(0)
    picked = rng.sample(range(len(names)), args.prompts)
    prompts = [names[i] for i in picked]
    net, _ = load(args.model)
    scorer = load_scorer()
    text = net.text
    real = adherence(scorer, text, data.images()[picked], prompts)
    shuffled = adherence(scorer, text, data.images()[picked], prompts[1:] + prompts[:1])
    report = {"model": args.model, "steps": args.steps, "prompts": args.prompts, "metric": "TIS (OpenMoji), not CLIP",
              "real_renders": real, "mismatched_pairs": shuffled, "by_guidance": []}
    for g in [float(v) for v in args.guidance.split(",")]:
        t0 = time.perf_counter()
        images = []
        for start in range(0, len(prompts), 16):
            chunk = prompts[start:start + 16]
            gens = [torch.Generator().manual_seed(start + i) for i in range(len(chunk))]
            images.append(net.sample(gens, prompt=chunk, guidance=g, sampler="ddim", steps=args.steps))
        images = torch.cat(images)
        row = {"guidance": g, **adherence(scorer, text, images, prompts), "seconds": round(time.perf_counter() - t0, 1)}
        report["by_guidance"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.grid:
            from gmkit.imageio import save_images

            save_images(images, f"{args.grid}_g{g:g}.png")
    text_out = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text_out + "\n")
    print(text_out)


if __name__ == "__main__":
    main()
