"""Line art -> colour on held-out OpenMoji: pix2pix, CycleGAN, SDEdit with the bundled ldm, and the input itself.

The held-out pairs (``openmoji-lines:test``: every 10th emoji, never trained on by pix2pix or CycleGAN)
are translated by each method and scored against the true colour emoji:

    PSNR, SSIM           per image, at 64 px (and at 32 px, the ldm's own resolution: every output
                         downsampled with antialiasing, so SDEdit is not charged for its upsampling)
    colourfulness        Hasler & Suesstrunk 2003, mean over images (the true colour emoji's is printed too)
    FD-TIS               Frechet distance between the outputs and the true colour emoji (177 each) over
                         the 128-d pooled features of gmkit's OpenMoji text-image scorer's image tower
                         (gmkit/metrics/text_image.py; an extractor trained on OpenMoji, NOT Inception:
                         this is not FID). Two real sets of the same size (training vs held-out colour
                         emoji) give the floor.

    identity   the line drawing itself ("return the input")
    pix2pix    a pix2pix model (paired training)
    cyclegan   a CycleGAN model, direction a2b (trained on the two domains matched at random)
    sdedit-S   the bundled text-to-image ldm (32 px): the line drawing, downsampled, noised to strength S
               and denoised with the emoji's name as the prompt (SDEdit, Meng et al. 2022), guidance 4,
               DDIM; upsampled to 64 px (bicubic). NB: the ldm was trained on ALL OpenMoji emoji,
               held-out ones included, so it has seen these targets; pix2pix and CycleGAN have not.

    OMP_NUM_THREADS=1 python benchmarks/translation.py --pix2pix pix2pix --cyclegan runs/cyclegan \\
        --out benchmarks/results/translation.json --grid docs/images/translation_grid.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gmkit.data.captioned import emoji_name
from gmkit.data import DataOptions
from gmkit.data.paired import _split_mask, load_pairs, openmoji_pair_stems
from gmkit.imageio import make_grid, to_pil
from gmkit.metrics.distances import frechet_distance
from gmkit.metrics.restoration import psnr, ssim
from gmkit.metrics.text_image import load_scorer
from gmkit.registry import load


def resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    kw = {"antialias": True} if size < x.shape[-1] else {}
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, **kw).clamp(-1, 1)


@torch.inference_mode()
def tis_features(scorer, x: torch.Tensor) -> np.ndarray:
    """The image tower's pooled features (before its projection), at its 32 px input size."""
    feats = [scorer.image.features(resize(x[i:i + 256], 32)).mean((2, 3)) for i in range(0, len(x), 256)]
    return torch.cat(feats).double().numpy()


def colourfulness(x: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk 2003, eq. 2 (0..255 scale): sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2),
    per image; 0 for grey images."""
    r, g, b = ((x.float() + 1) * 127.5).unbind(1)
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    return (rg.std(1) ** 2 + yb.std(1) ** 2).sqrt() + 0.3 * (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()


def scores(out: torch.Tensor, target: torch.Tensor, scorer, target_feats: np.ndarray) -> dict:
    s = {"colourfulness": float(colourfulness(out).mean()),"psnr_db": float(psnr(out, target).mean()), "ssim": float(ssim(out, target).mean()),
         "psnr_db_32px": float(psnr(resize(out, 32), resize(target, 32)).mean()),
         "ssim_32px": float(ssim(resize(out, 32), resize(target, 32)).mean()),
         "fd_tis": frechet_distance(tis_features(scorer, out), target_feats)}
    return {k: round(v, 4) for k, v in s.items()}


def sdedit(ldm, lines: torch.Tensor, prompts: list[str], strength: float, steps: int, batch: int) -> torch.Tensor:
    size = ldm.image_shape[-1]
    small = resize(lines, size)
    outs = []
    for i in range(0, len(small), batch):
        chunk = small[i:i + batch]
        gens = [torch.Generator().manual_seed(i + j) for j in range(len(chunk))]
        outs.append(ldm.sample(gens, image=chunk, strength=strength, prompt=prompts[i:i + batch], sampler="ddim",
                               steps=steps, guidance=4.0).float())
    return resize(torch.cat(outs), lines.shape[-1], "bicubic")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pix2pix", default="pix2pix")
    p.add_argument("--cyclegan", default=None, help="a cyclegan model (run folder or file); skipped if not given")
    p.add_argument("--ldm", default="ldm", help="the text-to-image model for SDEdit ('' skips it)")
    p.add_argument("--strengths", default="0.5,0.8")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the full schedule (SDEdit runs strength x steps)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n", type=int, default=1000, help="held-out pairs scored (the first n)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default=None)
    p.add_argument("--grid", default=None, help="PNG: rows of line art, each method, and the true colour emoji")
    args = p.parse_args()
    torch.set_grad_enabled(False)

    held = load_pairs("openmoji-lines:test", DataOptions(image_size=args.image_size)).tensors()
    lines, target = held["source"][:args.n], held["image"][:args.n]
    stems = openmoji_pair_stems()
    names = [emoji_name(s) for s, k in zip(stems, _split_mask(len(stems), "test")) if k][:args.n]
    train_colour = load_pairs("openmoji-lines:train", DataOptions(image_size=args.image_size)).images(len(target))
    scorer = load_scorer()
    target_feats = tis_features(scorer, target)
    results = {"data": "openmoji-lines:test", "pairs": len(target), "image_size": args.image_size,
               "extractor": "TIS-openmoji image tower, 128-d pooled features (gmkit/weights/tis-openmoji.safetensors)",
               "colourfulness_true_colour": round(float(colourfulness(target).mean()), 4),
               "fd_tis_real_vs_real": round(frechet_distance(tis_features(scorer, train_colour), target_feats), 4),
               "methods": {}}
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str, fn, about: str) -> None:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        outputs[name] = out
        results["methods"][name] = {"about": about, **scores(out, target, scorer, target_feats),
                                    "seconds_per_image": round(seconds / len(target), 4)}
        print(name, json.dumps(results["methods"][name]), flush=True)

    run("identity", lambda: lines.clone(), "the line drawing itself")
    net, _ = load(args.pix2pix)
    run("pix2pix", lambda: torch.cat([net.translate(lines[i:i + args.batch]) for i in range(0, len(lines), args.batch)]),
        f"{args.pix2pix}: pix2pix, paired training")
    if args.cyclegan:
        cg, _ = load(args.cyclegan)
        run("cyclegan", lambda: torch.cat([cg.translate(lines[i:i + args.batch], "a2b")
                                           for i in range(0, len(lines), args.batch)]),
            f"{args.cyclegan}: CycleGAN a2b, unpaired training")
    if args.ldm:
        ldm, _ = load(args.ldm)
        prompts = [f"an emoji of {'an' if n[:1] in 'aeiou' else 'a'} {n}" for n in names]
        for s in (float(v) for v in args.strengths.split(",")):
            run(f"sdedit-{s:g}", lambda s=s: sdedit(ldm, lines, prompts, s, args.steps, args.batch),
                f"{args.ldm} img2img at strength {s:g}, the emoji's name as prompt, guidance 4, DDIM {args.steps} steps")
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.grid:
        k = min(10, len(target))
        pick = torch.linspace(0, len(target) - 1, k).long()
        rows = [lines[pick]] + [outputs[m][pick] for m in outputs if m != "identity"] + [target[pick]]
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        to_pil(make_grid(torch.cat(rows), nrow=k)).save(args.grid)
        print("grid rows: line art, " + ", ".join(m for m in outputs if m != "identity") + ", true colour")


if __name__ == "__main__":
    main()
