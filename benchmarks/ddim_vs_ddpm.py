"""DDIM against DDPM on the same network: sample quality and speed, measured in one run.

Quality is a Frechet distance between generated and held-out MNIST images over the features of
a small CNN digit classifier trained here on the training split (fixed seed). It is NOT FID
(no InceptionV3): call it FD-mnist-cnn. The real-vs-real baseline (training images against
held-out ones, same count) is printed beside it, and so is the share of samples the classifier
labels with confidence > 0.9 (malformed digits get low confidence).

    python benchmarks/ddim_vs_ddpm.py --model ddpm --n 256 --out benchmarks/results/ddim_vs_ddpm.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gmkit.data import load_data
from gmkit.registry import load


class DigitCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        f = self.body(x)
        return self.head(f), f


def train_classifier(seed: int = 0, epochs: int = 3) -> DigitCNN:
    torch.manual_seed(seed)
    data = load_data("mnist", "train")
    net = DigitCNN()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(data))
        for i in range(0, len(data), 64):
            idx = perm[i:i + 64]
            x = data.images[idx] + 0.05 * torch.randn_like(data.images[idx])
            loss = F.cross_entropy(net(x)[0], data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def features(net: DigitCNN, x: torch.Tensor):
    logits, f = zip(*(net(x[i:i + 256]) for i in range(0, len(x), 256)))
    return torch.cat(logits), torch.cat(f).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(Ca + Cb - 2 (Ca Cb)^1/2), the square root via an eigendecomposition
    of the symmetric product Ca^1/2 Cb Ca^1/2 (stable when a covariance is singular)."""
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    sa = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sa @ cb @ sa
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--ddim-steps", default="10,20,50,100")
    p.add_argument("--ddpm-steps", default="1000")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    t0 = time.perf_counter()
    clf = train_classifier()
    held = load_data("mnist", "test")
    train = load_data("mnist", "train")
    acc = float((features(clf, held.images)[0].argmax(1) == held.labels).float().mean())
    _, f_held = features(clf, held.images[: args.n])
    g = torch.Generator().manual_seed(1)
    _, f_train = features(clf, train.images[torch.randperm(len(train), generator=g)[: args.n]])
    baseline = frechet(f_train, f_held)
    print(f"classifier held-out accuracy {acc:.3f}; FD-mnist-cnn train-vs-held-out baseline {baseline:.2f} "
          f"(n={args.n}) [{time.perf_counter() - t0:.0f}s]", flush=True)

    net, _ = load(args.model)
    runs = [("ddpm", int(s)) for s in args.ddpm_steps.split(",") if s] + \
           [("ddim", int(s)) for s in args.ddim_steps.split(",") if s]
    rows = []
    for sampler, steps in runs:
        t = time.perf_counter()
        chunks = []
        for start in range(0, args.n, args.batch):
            gens = [torch.Generator().manual_seed(i) for i in range(start, min(start + args.batch, args.n))]
            chunks.append(net.sample(gens, sampler=sampler, steps=steps))
        x = torch.cat(chunks)
        secs = time.perf_counter() - t
        logits, f = features(clf, x)
        conf = float((logits.softmax(1).max(1).values > 0.9).float().mean())
        row = {"sampler": sampler, "steps": steps, "n": args.n, "fd_mnist_cnn": round(frechet(f, f_held), 3),
               "confident_share": round(conf, 3), "seconds": round(secs, 2), "images_per_s": round(args.n / secs, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"model": args.model, "baseline_fd_train_vs_heldout": round(baseline, 3), "classifier_accuracy": acc,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
