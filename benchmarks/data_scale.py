"""Training on image folders of growing size: memory must stay flat in N, the loader must keep up.

For N synthetic 64x64 RGB PNGs (default 5k, 50k, 200k) it runs
``gmkit train ddpm --data FOLDER --steps 20`` as a fresh process and reports

- the cache's first build: seconds and images/s (decode in worker processes into the uint8 cache),
- the peak RSS (VmHWM) of the training process, first build and cache hit,
- loader images/s (the DataLoader alone, same batches) against training-step images/s,
- the same run under ``torchrun --nproc_per_node 2``: each rank's peak RSS.

Pass criteria (printed): peak RSS at the largest N within 1.3x of the smallest and under 1.5 GB; a
rank of a two-process run no larger than 1.3x the single process. A first row trains on 64 images:
the memory of the model and its activations alone, so the rows show what the data adds.

The images are generated once (smooth random colour fields plus noise, so PNGs compress as photos
do) into --root, outside the repository; the smaller sets are hard links to the first files of the
largest, so they cost no extra disk.

    OMP_NUM_THREADS=1 python benchmarks/data_scale.py --root /tmp/gmkit-synth --workers 1 \
        --out benchmarks/results/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def generate(folder: Path, n: int, size: int = 64, seed: int = 0) -> None:
    """``n`` PNGs named 0000000.png... in ``folder``; files already there are kept."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    for i in range(n):
        path = folder / f"{i:07d}.png"
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        noise = rng.integers(-12, 13, (size, size, 3))
        if path.exists():
            continue
        im = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        im = np.clip(im + noise, 0, 255).astype(np.uint8)
        Image.fromarray(im).save(path, compress_level=1)
        if (i + 1) % 20000 == 0:
            print(f"generated {i + 1}/{n} ({(i + 1) / (time.perf_counter() - t):.0f}/s)", file=sys.stderr, flush=True)


def link_subset(big: Path, small: Path, n: int) -> None:
    small.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dst = small / f"{i:07d}.png"
        if not dst.exists():
            os.link(big / f"{i:07d}.png", dst)


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_measured(cmd: list[str], env: dict, ranks: bool = False) -> dict:
    """Run ``cmd``; the peak RSS of the process (or, with ``ranks``, of each of its direct children:
    torchrun's ranks), sampled until it exits. VmHWM is the kernel's own high-water mark."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        watch = _children(proc.pid) if ranks else [proc.pid]
        for pid in watch:
            peaks[pid] = max(peaks.get(pid, 0.0), _peak_rss_mb(pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    summary = json.loads(out[out.index("{"):])
    return {"seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": [round(v, 1) for v in peaks.values()],
            "summary": summary, "stderr_tail": err[-600:]}


def loader_rate(folder: Path, batch: int, steps: int, workers: int) -> float:
    """Images/s of the training loader alone (cache already built), over the same batches a run uses."""
    code = (
        "import json,sys,time\n"
        "from gmkit.data import load_data\n"
        "from gmkit.data.loader import make_loader\n"
        f"ds = load_data({str(folder)!r}, workers={workers})\n"
        f"it = iter(make_loader(ds, {batch}, seed=0, start_step=0, workers={workers}))\n"
        "next(it); t = time.perf_counter()\n"
        f"for _ in range({steps}): b = next(it)\n"
        f"print(json.dumps({{'images_s': {batch * steps} / (time.perf_counter() - t)}}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    return round(json.loads(r.stdout.strip().splitlines()[-1])["images_s"], 1)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "gmkit-synth"))
    p.add_argument("--sizes", default="5000,50000,200000")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="decode and loader worker processes")
    p.add_argument("--torchrun", action="store_true", default=True)
    p.add_argument("--no-torchrun", dest="torchrun", action="store_false")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    sizes = sorted(int(s) for s in args.sizes.split(","))
    baseline = 64  # the model's own memory: training on a data set too small to matter
    root = Path(args.root)
    big = root / f"n{sizes[-1]}"
    generate(big, sizes[-1])
    for n in [baseline] + sizes[:-1]:
        link_subset(big, root / f"n{n}", n)
    if args.generate_only:
        return
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # every first build is a real first build
    env = {**_env(), "GMKIT_CACHE": str(cache)}
    small = ["--set", "unet.block_out_channels=[32,64,64]", "--set", "unet.layers_per_block=1",
             "--set", "train.preview=0", "--set", "train.log_every=5"]

    def train_cmd(folder: Path, out: Path) -> list[str]:
        return ["-m", "gmkit", "train", "ddpm", "--data", str(folder), "--steps", str(args.steps),
                "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu",
                "--out", str(out), "--json", "--quiet", *small]

    rows = []
    for n in [baseline] + sizes:
        folder = root / f"n{n}"
        runs = root / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        first = run_measured([sys.executable, *train_cmd(folder, runs / "first")], env)
        build = first["summary"].get("data", {}).get("cache_build_s")
        hit = run_measured([sys.executable, *train_cmd(folder, runs / "hit")], env)
        # Steady state: the log's rates after the first interval (which holds start-up and warm-up).
        log = [json.loads(line) for line in (runs / "hit" / "log.jsonl").read_text().splitlines()][1:]
        step_rate = statistics.median(r["it_s"] for r in log) * args.batch_size if log else float("nan")
        wait = statistics.median(r["data_wait"] for r in log) if log else float("nan")
        row = {"n": n, "cache_build_s": build, "cache_build_images_s": round(n / build, 1) if build else None,
               "peak_rss_mb_first_build": first["peak_rss_mb"][0], "peak_rss_mb_cache_hit": hit["peak_rss_mb"][0],
               "loader_images_s": loader_rate(folder, args.batch_size, 50, args.workers),
               "train_step_images_s": round(step_rate, 1), "train_time_waiting_for_data": round(wait, 4)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    report = {"command": "python benchmarks/data_scale.py " + " ".join(sys.argv[1:]), "steps": args.steps,
              "batch_size": args.batch_size, "workers": args.workers, "image_size": 64, "rows": rows}
    peak = [max(r["peak_rss_mb_first_build"], r["peak_rss_mb_cache_hit"]) for r in rows]
    last_rss = rows[-1]["peak_rss_mb_cache_hit"]
    worst = max(peak)
    report["rss_ratio_largest_to_smallest"] = round(peak[-1] / peak[1], 3)  # 200k against 5k (row 0: baseline)
    report["rss_over_baseline_mb"] = [round(p - peak[0], 1) for p in peak]
    report["flat_in_n"] = report["rss_ratio_largest_to_smallest"] <= 1.3 and worst < 1536
    if args.torchrun:
        folder = root / f"n{sizes[-1]}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), *train_cmd(folder, root / "runs" / "ddp")]
        ddp = run_measured(cmd, env, ranks=True)
        report["torchrun_2_ranks"] = {"n": sizes[-1], "peak_rss_mb_per_rank": ddp["peak_rss_mb"],
                                      "single_process_mb": last_rss,
                                      "rank_over_single": round(max(ddp["peak_rss_mb"]) / last_rss, 3)}
        report["torchrun_not_doubled"] = report["torchrun_2_ranks"]["rank_over_single"] <= 1.3
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
