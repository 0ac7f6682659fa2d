"""Held-out numbers for the autoencoder families and the quantize command.

    OMP_NUM_THREADS=1 python benchmarks/autoencoders.py [--vae vae] [--vqvae vqvae] [--augvae augvae] [--json]

* VAE: bits/dim of the ELBO and of the importance-weighted bound (K samples) on the MNIST
  held-out split (every 10th image per class, 500 images), discretized-logistic decoder.
* VQ-VAE: reconstruction MSE (images in [-1, 1]) on the held-out split, codebook usage (share of
  codes used by the held-out code maps) and perplexity; the same for code maps drawn from the prior.
* AugVAE: a small CNN classifier is trained here on the MNIST training split (independently of
  the AugVAE); the share of ``--class k`` samples it assigns to class k, per class and overall.
* quantize: k-means fit of 100,000 random vectors of dim 64 to 256 codes (wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from gmkit.data import load_data
from gmkit.registry import load


def vae_numbers(source: str, test, samples: int) -> dict:
    net, _ = load(source)
    labels = test.labels if net.config.num_classes else None
    return {"source": source, **net.bits_per_dim(test.images(), labels, samples=samples)}


def vqvae_numbers(source: str, test, n_prior: int) -> dict:
    net, _ = load(source)
    with torch.inference_mode():
        x = test.images()
        recon, codes = net.reconstruct(x)
        mse = float((recon - x).pow(2).mean())
        k = net.config.num_codes
        counts = torch.bincount(codes.flatten(), minlength=k).double()
        p = counts / counts.sum()
        ppl = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        sampled = net.sample_codes([torch.Generator().manual_seed(i) for i in range(n_prior)])
        sc = torch.bincount(sampled.flatten(), minlength=k)
    return {"source": source, "recon_mse": mse, "psnr_db": 10 * torch.log10(torch.tensor(4 / mse)).item(),
            "codebook_usage": float((counts > 0).double().mean()), "codes_used": int((counts > 0).sum()),
            "num_codes": k, "perplexity": ppl, "prior_sample_usage": float((sc > 0).double().mean())}


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
        self.f1, self.f2 = nn.Linear(64 * 5 * 5, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.f2(F.relu(self.f1(x.flatten(1))))


def train_classifier(train, test, epochs: int = 6, seed: int = 0) -> tuple[nn.Module, float]:
    """A small CNN on the MNIST training split, with random shifts; returns (net, held-out accuracy)."""
    torch.manual_seed(seed)
    net = DigitNet()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    n, images = len(train), train.images()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n - 63, 64):
            idx = perm[s:s + 64]
            x = images[idx]
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(x, (dx, dy), (2, 3))
            loss = F.cross_entropy(net(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        acc = float((net(test.images()).argmax(1) == test.labels).float().mean())
    return net, acc


def augvae_numbers(source: str, classifier, per_class: int, test, samples: int) -> dict:
    net, _ = load(source)
    per = {}
    with torch.inference_mode():
        for k in range(net.config.num_classes):
            gens = [torch.Generator().manual_seed(i) for i in range(per_class)]
            x = net.sample(gens, class_label=k)
            per[k] = float((classifier(x).argmax(1) == k).float().mean())
    bpd = net.bits_per_dim(test.images(), test.labels, samples=samples)
    return {"source": source, "class_match": sum(per.values()) / len(per), "per_class": per,
            "samples_per_class": per_class, "heldout_elbo_bpd": bpd["elbo_bpd"], "heldout_iwae_bpd": bpd["iwae_bpd"]}


def quantize_timing(n: int = 100_000, dim: int = 64, codes: int = 256, seed: int = 0) -> dict:
    from gmkit.codebooks import assign, fit

    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    books = fit(x, codes, levels=1, iters=20, seed=seed)
    t1 = time.perf_counter()
    idx, recon = assign(x, books)
    t2 = time.perf_counter()
    return {"vectors": n, "dim": dim, "codes": codes, "fit_seconds": round(t1 - t0, 2), "assign_seconds": round(t2 - t1, 2),
            "mse": float((x - recon).pow(2).mean()), "threads": torch.get_num_threads(),
            "loadavg_1min": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="vae")
    ap.add_argument("--vqvae", default="vqvae")
    ap.add_argument("--augvae", default="augvae")
    ap.add_argument("--iw-samples", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--only", default="vae,vqvae,augvae,quantize")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(","))
    test = load_data("mnist", "test")
    res: dict = {"threads": torch.get_num_threads()}
    if "vae" in only:
        res["vae"] = vae_numbers(args.vae, test, args.iw_samples)
        print("vae", res["vae"], file=sys.stderr)
    if "vqvae" in only:
        res["vqvae"] = vqvae_numbers(args.vqvae, test, 500)
        print("vqvae", res["vqvae"], file=sys.stderr)
    if "augvae" in only:
        clf, acc = train_classifier(load_data("mnist", "train"), test)
        res["classifier_heldout_accuracy"] = acc
        res["augvae"] = augvae_numbers(args.augvae, clf, args.per_class, test, args.iw_samples)
        print("augvae", acc, res["augvae"], file=sys.stderr)
    if "quantize" in only:
        res["quantize"] = quantize_timing()
        print("quantize", res["quantize"], file=sys.stderr)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
