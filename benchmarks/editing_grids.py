"""img2img and inpainting with a trained diffusion model: grids for docs/images and the known-region error.

Held-out images (never trained on) are edited at several strengths (SDEdit) and with their right
half masked out (RePaint). For pixel diffusion the known region must come back bit-exact; for
latent diffusion the numbers show the autoencoder's reconstruction error there, which gmkit hides
by pasting the known pixels back.

    OMP_NUM_THREADS=1 python benchmarks/editing_grids.py --model ddpm --data mnist:test \
        --grid-prefix docs/images/ddpm --out benchmarks/results/editing_ddpm.json
    OMP_NUM_THREADS=1 python benchmarks/editing_grids.py --model ldm --data openmoji:test \
        --prompt "a red apple" --grid-prefix docs/images/ldm --out benchmarks/results/editing_ldm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gmkit.data import load_data
from gmkit.imageio import make_grid, to_pil
from gmkit.registry import load

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm")
    p.add_argument("--data", default="mnist:test")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--prompt", default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--resample", type=int, default=5)
    p.add_argument("--grid-prefix", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    torch.set_grad_enabled(False)
    net, _ = load(args.model)
    c, h, w = net.image_shape
    data = load_data(args.data, image_size=h, channels=c).images()
    x = data[::max(1, len(data) // args.n)][:args.n]  # spread over the set (MNIST's split is sorted by digit)
    n = len(x)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(n)]  # noqa: E731
    extra = {"prompt": args.prompt} if args.prompt is not None else {}
    results: dict = {"model": args.model, "data": args.data, "images": n, "steps": args.steps}

    rows = []
    for s in STRENGTHS:
        rows.append(net.sample(gens(), image=x, strength=s, sampler="ddim", steps=args.steps, **extra))
    results["img2img_mean_abs_change"] = {str(s): round(float((r - x).abs().mean()), 4) for s, r in zip(STRENGTHS, rows)}

    mask = torch.zeros(n, 1, h, w)
    mask[..., w // 2:] = 1  # generate the right half
    inpaint = {}
    for sampler, steps in (("ddim", args.steps), ("ddpm", 250)):
        t = time.perf_counter()
        out = net.sample(gens(), image=x, mask=mask, sampler=sampler, steps=steps, resample=args.resample, **extra)
        inpaint[sampler] = out
        results[f"inpaint_{sampler}"] = {
            "steps": steps, "resample": args.resample, "jump": 10, "seconds_per_image": round((time.perf_counter() - t) / n, 2),
            "known_region_max_abs_error": float((out - x)[..., : w // 2].abs().max()),
            "hole_mean_abs_change": round(float((out - x)[..., w // 2:].abs().mean()), 4)}
    if hasattr(net, "from_latents"):  # what the known region would be without pasting the pixels back
        rec = net.decode(net.encode(x)["latents"])
        results["autoencoder_known_region_mean_abs_error"] = round(float((rec - x)[..., : w // 2].abs().mean()), 4)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.grid_prefix:
        Path(args.grid_prefix).parent.mkdir(parents=True, exist_ok=True)
        to_pil(make_grid(torch.cat(rows), nrow=n)).save(f"{args.grid_prefix}_img2img.png")
        holed = x * (1 - mask) + mask  # the hole shown white
        to_pil(make_grid(torch.cat([x, holed, inpaint["ddim"], inpaint["ddpm"]]), nrow=n)).save(f"{args.grid_prefix}_inpaint.png")


if __name__ == "__main__":
    main()
