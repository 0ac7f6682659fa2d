"""Train the TIS text-image scorer (gmkit/metrics/text_image.py) on OpenMoji, offline.

    OMP_NUM_THREADS=1 python benchmarks/train_text_image_scorer.py --steps 1500 \
        --out gmkit/weights/tis-openmoji.safetensors

The text side is the LDM's frozen MiniLM sentence embedding plus a learned linear head; the image
side is a small CNN. Images are augmented (shifts, scale, blur, noise) so that the scorer also reads
generated images, which are softer than the renders. Prints held-out retrieval accuracy at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmkit.checkpoint import save_model  # noqa: E402
from gmkit.data import load_data  # noqa: E402
from gmkit.metrics.text_image import TextImageScorer, adherence  # noqa: E402
from gmkit.nn.text import load_text_encoder  # noqa: E402


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    scale = 1 + (torch.rand(b, generator=g) - 0.5) * 0.3
    shift = (torch.rand(b, 2, generator=g) - 0.5) * 0.25
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # white (1) stays white
    x = torch.where((grid.abs() > 1).any(-1, keepdim=True).permute(0, 3, 1, 2), torch.ones_like(x), x)
    blur = torch.rand(b, generator=g) < 0.5
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur.view(b, 1, 1, 1), 0.5 * x + 0.5 * soft, x)
    return (x + torch.randn(x.shape, generator=g) * 0.05 * torch.rand(b, 1, 1, 1, generator=g)).clamp(-1, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default="gmkit/weights/tis-openmoji.safetensors")
    args = ap.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train, test = load_data("openmoji", "train"), load_data("openmoji", "test")
    enc = load_text_encoder("minilm")
    t0 = time.time()

    def sentences(data):
        flat = [c for caps in data.captions for c in caps]
        emb = torch.cat([enc.pooled(flat[i:i + 512]) for i in range(0, len(flat), 512)])
        return emb.view(len(data), -1, emb.shape[-1])

    emb = sentences(train)
    print(f"encoded {emb.shape[0] * emb.shape[1]} captions in {time.time() - t0:.1f} s", file=sys.stderr)
    model = TextImageScorer()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    n, images = len(train), train.images()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + torch.cos(torch.tensor(step / args.steps * 3.14159)).item())
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randperm(n, generator=g)[:args.batch_size]
        variant = torch.randint(0, emb.shape[1], (len(idx),), generator=g)
        loss = model.loss(augment(images[idx], g), emb[idx, variant])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} lr {lr:.2e} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    model.eval()
    report = {}
    for name, data in (("train", train), ("held_out", test)):
        prompts = [c[0] for c in data.captions]
        report[name] = adherence(model, enc, data.images(), prompts)
    report["steps"] = args.steps
    report["seconds"] = round(time.time() - t0, 1)
    save_model(Path(args.out), "tis", {"dim": 256, "text_encoder": "minilm"}, model.state_dict(),
               {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv), "data": "openmoji (train split)", **report},
               dtype=torch.float16)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
