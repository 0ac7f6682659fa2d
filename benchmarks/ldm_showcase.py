"""A labelled grid of text-to-image samples: one row per prompt, seeds 0..K-1 across.

    OMP_NUM_THREADS=1 python benchmarks/ldm_showcase.py --model ldm --out docs/images/ldm_prompts.png

Prompts come from --prompts (a text file, one per line) or the built-in list below, which mixes
OpenMoji names with prompts that are not emoji names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmkit.registry import load  # noqa: E402

PROMPTS = [
    "a futuristic cityscape at sunset",
    "a red apple",
    "a green apple",
    "a rocket",
    "a snowman",
    "a slice of pizza",
    "a rainbow",
    "a smiling face",
    "a black cat",
    "a christmas tree",
    "a house with a garden",
    "the moon at night",
    "a yellow sports car",
    "a birthday cake",
    "a sad face in the rain",
    "an octopus",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ldm")
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--per-prompt", type=int, default=6)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scale", type=int, default=3, help="pixel upscaling for display (nearest)")
    ap.add_argument("--out", default="docs/images/ldm_prompts.png")
    args = ap.parse_args()
    from PIL import Image, ImageDraw

    prompts = Path(args.prompts).read_text().splitlines() if args.prompts else PROMPTS
    prompts = [p for p in prompts if p.strip()]
    net, _ = load(args.model)
    k, s = args.per_prompt, args.scale
    rows = []
    for p in prompts:
        gens = [torch.Generator().manual_seed(i) for i in range(k)]
        opts = {"sampler": "ddim", "steps": args.steps}
        if args.guidance is not None:
            opts["guidance"] = args.guidance
        rows.append(net.sample(gens, prompt=p, **opts))
    size = rows[0].shape[-1] * s
    label_w = 260
    sheet = Image.new("RGB", (label_w + k * (size + 4), len(prompts) * (size + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (p, x) in enumerate(zip(prompts, rows)):
        draw.text((6, r * (size + 4) + size // 2 - 6), p, fill=(0, 0, 0))
        arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        for c in range(k):
            im = Image.fromarray(arr[c] if arr.shape[-1] == 3 else arr[c, ..., 0]).resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(im, (label_w + c * (size + 4), r * (size + 4)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(prompts)} prompts x {k} seeds)", file=sys.stderr)


if __name__ == "__main__":
    main()
