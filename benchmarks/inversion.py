"""Reconstruction through each latent space: encode then decode held-out MNIST with the VAE, the flow and
the GAN (inversion), and score the result against the input.

    vae        the posterior mean, decoded (the decoder's mean)
    flow       exact: the flow is invertible, so the error is numerical only
    gan        ``encode`` = inversion (gmkit/families/gan_inversion.py): Adam on z from the best of 16
               random draws, for each number of steps in --gan-steps
    gan+E      the same, started from an encoder's guess. The bundled GAN has no encoder, so one is
               fitted here to its frozen generator (``encoder_step``: E(G(z)) -> z on the generator's own
               samples, no real data) for --encoder-steps steps, then attached to the model

    OMP_NUM_THREADS=1 python benchmarks/inversion.py --n 64 --out benchmarks/results/inversion.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gmkit.data import load_data
from gmkit.families.gan_inversion import LatentEncoder, encoder_step
from gmkit.metrics.restoration import psnr
from gmkit.registry import load


def score(name: str, x: torch.Tensor, rec: torch.Tensor, seconds: float, **extra) -> dict:
    row = {"model": name, "mse": float(f"{float((rec - x).pow(2).mean()):.4g}"), "psnr_db": round(float(psnr(rec, x).mean()), 2),
           "seconds_per_image": round(seconds / len(x), 4), **extra}
    print(json.dumps(row), flush=True)
    return row


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=64, help="held-out MNIST images (the first n)")
    p.add_argument("--gan-steps", default="0,50,200,500")
    p.add_argument("--encoder-steps", type=int, default=2000)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    x = load_data("mnist", "test").images(args.n)
    rows = []

    vae, _ = load("vae")
    rec, s = timed(lambda: vae.decode(vae.encode(x)["mean"]))
    rows.append(score("vae", x, rec, s, how="posterior mean -> decoder mean"))
    flow, _ = load("flow")
    rec, s = timed(lambda: flow.decode(flow.encode(x)["z"]))
    rows.append(score("flow", x, rec, s, how="exact inverse"))

    gan, _ = load("gan")
    for steps in (int(v) for v in args.gan_steps.split(",")):
        out, s = timed(lambda: gan.encode(x, steps=steps))
        rows.append(score("gan", x, gan.decode(out["z"]), s, how=f"best of 16 draws + {steps} Adam steps"))

    torch.manual_seed(0)
    c = gan.config
    enc = LatentEncoder(c.in_channels, c.image_size, [32, 64], c.latent_dim)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    (_, fit_s) = timed(lambda: [encoder_step(enc, gan.generator, opt, 64, c.latent_dim, None, "cpu")
                                for _ in range(args.encoder_steps)])
    gan.encoder = enc.eval().requires_grad_(False)
    for steps in (int(v) for v in args.gan_steps.split(",")):
        out, s = timed(lambda: gan.encode(x, steps=steps))
        rows.append(score("gan+E", x, gan.decode(out["z"]), s, how=f"encoder guess + {steps} Adam steps",
                          encoder_fit_seconds=round(fit_s, 1)))
    result = {"data": "mnist:test", "images": len(x), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
