"""Autoregressive tokens against latent diffusion: the bundled vqgpt and ldm side by side, in one run.

    OMP_NUM_THREADS=1 python benchmarks/vqgpt_vs_ldm.py --out benchmarks/results/vqgpt_vs_ldm.json \
        --grid docs/images/vqgpt_vs_ldm.png --completion-grid docs/images/vqgpt_completion.png

Both models were trained on the same data (all 1,773 captioned OpenMoji emoji at 32 px) with the same
frozen MiniLM text encoder. Measured:
- prompt adherence: TIS similarity and top-1 retrieval (gmkit/metrics/text_image.py, the scorer
  benchmarks/prompt_adherence.py uses) on the same 64 OpenMoji names, one image per prompt, seed =
  prompt index; each model at its default guidance, vqgpt also at a few other scales;
- diversity across seeds for one prompt: 16 seeds per prompt, mean pairwise distance of the images
  (TIS image embeddings: 1 - cosine; pixels: RMS in [-1, 1] units);
- images/s at batch 16 on this CPU (median of 3 after a warm-up; vqgpt with and without its KV
  cache), and network FLOPs per image (torch.utils.flop_counter; the text encoder, the same for both,
  counted apart).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmkit.data import load_data  # noqa: E402
from gmkit.metrics.text_image import adherence, load_scorer  # noqa: E402
from gmkit.registry import load  # noqa: E402

DIVERSITY_PROMPTS = ["red apple", "rocket", "grinning face", "sunset over buildings", "snowman", "birthday cake"]
GRID_PROMPTS = ["a futuristic cityscape at sunset", "a red apple", "a rocket", "a slice of pizza", "a rainbow",
                "a smiling face", "a black cat", "a christmas tree", "a birthday cake", "an octopus"]


def gens(start: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


DEFAULTS: dict[str, dict] = {}  # family -> the sample options its bundled name implies (ldm: DDIM, 50 steps)


def options(net, **extra) -> dict:
    """What ``gmkit sample NAME`` would use, with ``extra`` on top."""
    return {**DEFAULTS.get(net.name, {}), **{k: v for k, v in extra.items() if v is not None}}


def draw(net, prompts: list[str], seed0: int = 0, batch: int = 16, **opts) -> torch.Tensor:
    out = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        out.append(net.sample(gens(seed0 + s, len(chunk)), prompt=chunk, **options(net, **opts)))
    return torch.cat(out)


def diversity(scorer, images: torch.Tensor) -> dict[str, float]:
    """Mean over pairs of seeds: 1 - cosine of the TIS image embeddings, and the pixels' RMS distance."""
    with torch.inference_mode():
        emb = scorer.image(images.float())
    n = len(images)
    iu = torch.triu_indices(n, n, 1)
    cos = (emb @ emb.T)[iu[0], iu[1]]
    flat = images.flatten(1)
    rms = (flat[iu[0]] - flat[iu[1]]).pow(2).mean(1).sqrt()
    return {"tis_distance": round(float(1 - cos.mean()), 4), "pixel_rms": round(float(rms.mean()), 4)}


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def speed(net, batch: int, runs: int, **opts) -> float:
    """Images per second at ``batch`` (median of ``runs`` after one warm-up)."""
    prompts = ["a red apple"] * batch
    net.sample(gens(0, batch), prompt=prompts, **options(net, **opts))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        net.sample(gens(0, batch), prompt=prompts, **options(net, **opts))
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vqgpt", default="vqgpt")
    ap.add_argument("--ldm", default="ldm")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--guidance", default="1,2,3,5", help="vqgpt guidance scales for the adherence table, at its defaults otherwise")
    ap.add_argument("--temperature", default="1,0.7,0", help="vqgpt temperatures for the adherence table, at its defaults otherwise")
    ap.add_argument("--top-k", default="32", help="vqgpt top-k values for the adherence table, at its defaults otherwise")
    ap.add_argument("--seeds", type=int, default=16, help="seeds per prompt for diversity")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--grid", default=None, help="side-by-side grid: ldm seeds 0-3 | vqgpt seeds 0-3 per prompt")
    ap.add_argument("--completion-grid", default=None, help="vqgpt masked completion examples")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    vq, vq_src = load(args.vqgpt)
    ldm, ldm_src = load(args.ldm)
    DEFAULTS.update({"vqgpt": vq_src.defaults, "ldm": ldm_src.defaults})
    scorer = load_scorer()
    text = ldm.text  # the same frozen MiniLM for both models and the scorer
    data = load_data("openmoji")
    names = [c[0] for c in data.captions]
    picked = random.Random(0).sample(range(len(names)), args.prompts)  # benchmarks/prompt_adherence.py's prompts
    prompts = [names[i] for i in picked]
    real = data.images()
    report: dict = {"models": {"vqgpt": args.vqgpt, "ldm": args.ldm}, "defaults": DEFAULTS, "torch_threads": torch.get_num_threads(),
                    "metric": "TIS (OpenMoji), not CLIP", "prompts": args.prompts,
                    "real_renders": adherence(scorer, text, real[picked], prompts),
                    "mismatched_pairs": adherence(scorer, text, real[picked], prompts[1:] + prompts[:1])}

    # -- prompt adherence ---------------------------------------------------------------------------
    rows = []
    t0 = time.perf_counter()
    rows.append({"model": "ldm", "guidance": ldm.default_guidance, **options(ldm), **adherence(scorer, text, draw(ldm, prompts), prompts),
                 "seconds": round(time.perf_counter() - t0, 1)})
    settings = [{"guidance": float(g)} for g in args.guidance.split(",") if g]
    settings += [{"temperature": float(t)} for t in args.temperature.split(",") if t]
    settings += [{"top_k": int(k)} for k in args.top_k.split(",") if k]
    for opts in settings:
        t0 = time.perf_counter()
        rows.append({"model": "vqgpt", "guidance": vq.default_guidance, "temperature": 1.0, **options(vq, **opts),
                     **adherence(scorer, text, draw(vq, prompts, **opts), prompts),
                     "seconds": round(time.perf_counter() - t0, 1)})
    report["adherence"] = rows
    print(json.dumps(rows), file=sys.stderr, flush=True)

    # -- diversity across seeds -----------------------------------------------------------------------
    div = {"ldm": {}, "vqgpt": {}}
    for p in DIVERSITY_PROMPTS:
        for name, net in (("ldm", ldm), ("vqgpt", vq)):
            div[name][p] = diversity(scorer, draw(net, [p] * args.seeds))
    for name in div:
        div[name]["mean"] = {k: round(statistics.mean(v[k] for v in div[name].values()), 4)
                             for k in ("tis_distance", "pixel_rms")}
    report["diversity"] = {"seeds_per_prompt": args.seeds, **div}
    print(json.dumps({k: v["mean"] for k, v in div.items()}), file=sys.stderr, flush=True)

    # -- cost ---------------------------------------------------------------------------------------
    one = ["a red apple"]
    text_flops = flops(lambda: text.encode(one + one))
    cost = {
        "ldm": {"images_per_s": speed(ldm, args.batch, args.runs),
                "gflops_per_image": flops(lambda: ldm.sample(gens(0, 1), prompt=one, **options(ldm))) - text_flops},
        "vqgpt (KV cache)": {"images_per_s": speed(vq, args.batch, args.runs),
                             "gflops_per_image": flops(lambda: vq.sample(gens(0, 1), prompt=one, **options(vq))) - text_flops},
        "vqgpt (no cache)": {"images_per_s": speed(vq, args.batch, args.runs, use_cache=False),
                             "gflops_per_image": flops(lambda: vq.sample(gens(0, 1), prompt=one, **options(vq, use_cache=False))) - text_flops},
    }
    for row in cost.values():
        row["gflops_per_image"] = round(row["gflops_per_image"] / 1e9, 3)
        row["images_per_s"] = round(row["images_per_s"], 2)
        row["ms_per_image"] = round(1000 / row["images_per_s"], 1)
    report["cost"] = {"batch": args.batch, "runs": args.runs, "text_encoder_gflops_per_prompt_pair": round(text_flops / 1e9, 4),
                      "rows": cost,
                      "ldm_over_vqgpt_time": round(cost["vqgpt (KV cache)"]["images_per_s"] / cost["ldm"]["images_per_s"], 2),
                      "cache_speedup": round(cost["vqgpt (KV cache)"]["images_per_s"] / cost["vqgpt (no cache)"]["images_per_s"], 2),
                      "cache_flop_ratio": round(cost["vqgpt (no cache)"]["gflops_per_image"] / cost["vqgpt (KV cache)"]["gflops_per_image"], 2)}
    print(json.dumps(report["cost"]), file=sys.stderr, flush=True)

    if args.grid:
        side_by_side(ldm, vq, GRID_PROMPTS, args.grid)
    if args.completion_grid:
        completion(vq, real, names, args.completion_grid)
    text_out = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text_out + "\n")
    print(text_out)


def _tiles(x: torch.Tensor, scale: int):
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.Resampling.NEAREST) for a in arr]


def _sheet(rows: list[tuple[str, list]], header: list[str], path: str, label_w: int = 230) -> None:
    from PIL import Image, ImageDraw

    size = rows[0][1][0].width
    cols = len(rows[0][1])
    sheet = Image.new("RGB", (label_w + cols * (size + 4), 18 + len(rows) * (size + 4)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for c, h in enumerate(header):
        d.text((label_w + c * (size + 4) + 2, 3), h, fill=(0, 0, 0))
    for r, (label, tiles) in enumerate(rows):
        y = 18 + r * (size + 4)
        d.text((6, y + size // 2 - 6), label, fill=(0, 0, 0))
        for c, t in enumerate(tiles):
            sheet.paste(t, (label_w + c * (size + 4), y))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"wrote {path}", file=sys.stderr)


def side_by_side(ldm, vq, prompts: list[str], path: str, k: int = 4) -> None:
    rows = []
    for p in prompts:
        a = ldm.sample(gens(0, k), prompt=p, **options(ldm))
        b = vq.sample(gens(0, k), prompt=p, **options(vq))
        rows.append((p, _tiles(a, 2) + _tiles(b, 2)))
    _sheet(rows, [f"ldm {i}" for i in range(k)] + [f"vqgpt {i}" for i in range(k)], path)


def completion(vq, real: torch.Tensor, names: list[str], path: str, k: int = 4) -> None:
    """The bottom half (then the right half) of real emoji regenerated: input, kept part, k completions."""
    rows = []
    size = vq.config.image_size
    for name, half in (("red apple", "bottom"), ("rocket", "bottom"), ("grinning face", "right"), ("snowman", "right")):
        x = real[names.index(name)][None]
        m = torch.zeros(1, 1, size, size)
        if half == "bottom":
            m[..., size // 2:, :] = 1
        else:
            m[..., size // 2:] = 1
        kept = x * (1 - m) + m  # white where tokens are redrawn
        out = vq.sample(gens(0, k), prompt=name, image=x, mask=m, **options(vq))
        rows.append((f"{name} ({half} half redrawn)", _tiles(torch.cat([x, kept, out]), 2)))
    _sheet(rows, ["input", "kept"] + [f"seed {i}" for i in range(k)], path)


if __name__ == "__main__":
    main()
