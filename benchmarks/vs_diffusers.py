"""gmkit against diffusers on the same hardware: same architectures, same weights, one run.

Every ratio is diffusers' time / gmkit's time (above 1: gmkit is faster), both sides timed in the
same process, their repetitions interleaved so that a busy machine slows both alike; the median
of the repetitions is reported (and the minimum, in the JSON).

Workloads
    ddpm-mnist     the bundled DDPM UNet (1.1M parameters, MNIST 28x28), loaded into diffusers'
                   ``UNet2DModel`` strictly (same key names).
    ddpm-cifar10   the DDPM paper's CIFAR-10 UNet (Ho et al. 2020: 128-256-256-256 channels, two
                   residual blocks per level, attention at 16x16; 35.7M parameters), random weights
                   built in diffusers and mapped onto gmkit by gmkit.interop.
    sd15           (GPU only) a Stable-Diffusion-1.5-sized ``UNet2DConditionModel`` (860M, random
                   weights), one denoising step with classifier-free guidance (batch doubled).
Tasks
    train          one training step: noising, forward, MSE, backward, gradient clipping at 1.0,
                   AdamW (the diffusers example loop against ``Family.train_step``).
    ddim50         DDIM sampling with 50 steps (``DDIMScheduler`` loop against gmkit's sampler).
                   On the CPU the CIFAR-10 UNet runs ``--cifar-steps`` steps (default 5) and the
                   time is scaled to 50 (every step costs one network call of the same shape).

Configurations (each side at its default and at its best)
    diffusers  eager          fp32 (CPU) / bf16 (GPU): what its quick start runs
               compiled       torch.compile(unet), channels-last; on GPU, for sampling, with CUDA
                              graphs (mode="reduce-overhead")
               compiled-bf16  (CPUs with native bf16) compiled, in bf16: bf16 weights for sampling
                              (``torch_dtype=torch.bfloat16``), bf16 autocast for training
    gmkit      eager          its default path: fp32 on CPU, bf16 on GPU
               fast           ``runtime.compile_networks`` and bf16 where native: what
                              ``gmkit sample --compile --dtype bf16`` and
                              ``gmkit train --compile --set train.cpu_amp=true`` run

Run (CPU, one thread, in the background; about 2.5 hours on a busy 2-core machine, most of it
torch.compile of the ten compiled configurations):
    OMP_NUM_THREADS=1 python benchmarks/vs_diffusers.py            # -> benchmarks/results/vs_diffusers_cpu.json
On a GPU machine, one command (writes benchmarks/results/vs_diffusers_cuda.json):
    python benchmarks/vs_diffusers.py --device cuda
Select parts with --workloads ddpm-mnist,ddpm-cifar10,sd15 and --tasks train,ddim50.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gmkit import runtime  # noqa: E402
from gmkit.families.ddpm import DDPM, DDPMConfig  # noqa: E402
from gmkit.interop.diffusers import renamed, unet2d_condition_config, unet2d_config  # noqa: E402
from gmkit.registry import load  # noqa: E402

CIFAR10_UNET = {  # google/ddpm-cifar10-32's unet/config.json (the DDPM paper's model)
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 256, 256],
    "layers_per_block": 2, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": None,
    "norm_num_groups": 32, "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
}
SD15_UNET = {  # runwayml/stable-diffusion-v1-5's unet/config.json, less the defaults
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "cross_attention_dim": 768, "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
}


# -- the two sides' models, with identical weights -------------------------------------------------

def diffusers_config_of(cfg) -> dict:
    """gmkit ``UNetConfig`` -> the ``UNet2DModel`` config of the same network."""
    n = len(cfg.block_out_channels)
    attn = set(cfg.attention_blocks)
    return {"sample_size": cfg.sample_size, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
            "down_block_types": ["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n)],
            "up_block_types": ["AttnUpBlock2D" if n - 1 - i in attn else "UpBlock2D" for i in range(n)],
            "attention_head_dim": cfg.head_dim, "norm_num_groups": cfg.norm_groups, "norm_eps": cfg.norm_eps,
            "add_attention": cfg.mid_attention, "flip_sin_to_cos": cfg.flip_sin_to_cos, "freq_shift": int(cfg.freq_shift),
            "downsample_padding": cfg.downsample_padding}


def pair(workload: str, device) -> tuple[DDPM, torch.nn.Module, dict]:
    """(gmkit model, diffusers UNet, facts) with the same weights, fp32, on ``device``."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    if workload == "ddpm-mnist":
        model, _ = load("ddpm", device)
        d = diffusers.UNet2DModel(**diffusers_config_of(model.config.unet))
        d.load_state_dict(model.unet.state_dict(), strict=True)
    elif workload == "ddpm-cifar10":
        torch.manual_seed(0)
        d = diffusers.UNet2DModel(**CIFAR10_UNET)
        model = DDPM(DDPMConfig(unet=unet2d_config(CIFAR10_UNET, "cifar10"), clip_sample=True))
        model.load_state_dict(renamed(d.state_dict(), "unet."), strict=True)
    else:
        raise ValueError(workload)
    model = model.float().to(device).eval()
    d = d.float().to(device).eval()
    return model, d, {"parameters": sum(p.numel() for p in d.parameters())}


# -- timing ----------------------------------------------------------------------------------------

def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(units: dict[str, Callable[[], None]], rounds: int, device) -> dict[str, dict]:
    """Warm each unit up (compiles), then ``rounds`` interleaved timed repetitions of all of them."""
    out = {}
    for name, fn in units.items():
        t0 = time.perf_counter()
        fn()
        sync(device)
        first = time.perf_counter() - t0
        fn()
        sync(device)
        out[name] = {"first_call_s": round(first, 3), "times_s": []}
        print(f"  warm {name}: first call {first:.1f}s", file=sys.stderr, flush=True)
    names = list(units)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            t0 = time.perf_counter()
            units[name]()
            sync(device)
            out[name]["times_s"].append(round(time.perf_counter() - t0, 4))
    for v in out.values():
        v["median_s"] = round(statistics.median(v["times_s"]), 4)
        v["min_s"] = round(min(v["times_s"]), 4)
    return out


# -- units ------------------------------------------------------------------------------------------

def gmkit_train_unit(model: DDPM, batch: int, device, fast: bool, precision: str):
    # as the training loop holds it: channels-last, trainable (a loaded model is frozen for inference)
    model = copy.deepcopy(model).to(memory_format=torch.channels_last).train().requires_grad_(True)
    if fast:
        runtime.compile_networks(model, device, training=True)
    opts = model.optimizers(1e-4, 0.0)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, *model.image_shape, generator=g) * 2 - 1).to(device)
    data = {"image": images.contiguous(memory_format=torch.channels_last)}

    def unit():
        with runtime.autocast(device, precision):
            model.train_step(model, data, opts, 0, 1.0)
    return unit


def diffusers_train_unit(unet, batch: int, device, compiled: bool, precision: str):
    """The loop body of diffusers' examples/unconditional_image_generation/train_unconditional.py."""
    from diffusers import DDPMScheduler

    unet = copy.deepcopy(unet).train().requires_grad_(True)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    if compiled:
        unet = unet.to(memory_format=torch.channels_last)
        net = torch.compile(unet)
    else:
        net = unet
    g = torch.Generator().manual_seed(0)
    c, s = unet.config.in_channels, unet.config.sample_size
    images = (torch.rand(batch, c, s, s, generator=g) * 2 - 1).to(device)

    def unit():
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (batch,), device=device)
        noisy = sched.add_noise(images, noise, t)
        with runtime.autocast(device, precision):
            pred = net(noisy, t, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the example logs the loss every step
    return unit


def gmkit_ddim_unit(model: DDPM, batch: int, steps: int, device, fast: bool, dtype):
    model = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last)
    if fast:
        runtime.compile_networks(model, device, training=False)

    def unit():
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        model.sample(gens, sampler="ddim", steps=steps)
    return unit


def diffusers_ddim_unit(unet, batch: int, steps: int, device, compiled: bool, dtype, mode=None):
    """``DDIMPipeline.__call__`` without the PIL conversion."""
    from diffusers import DDIMScheduler

    unet = copy.deepcopy(unet).to(dtype=dtype)
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    if compiled:
        unet = unet.to(memory_format=torch.channels_last)
        net = torch.compile(unet, mode=mode) if mode else torch.compile(unet)
    else:
        net = unet
    c, s = unet.config.in_channels, unet.config.sample_size

    @torch.inference_mode()
    def unit():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, c, s, s, generator=g).to(device, dtype)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            out = net(x, t, return_dict=False)[0]
            x = sched.step(out.float(), t, x.float(), eta=0.0, return_dict=False)[0].to(dtype)
    return unit


def sd_pair(cfg: dict, device, dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(diffusers ``UNet2DConditionModel``, gmkit ``UNet``) with the same random weights."""
    import diffusers

    from gmkit.nn.unet import UNet

    torch.manual_seed(0)
    d = diffusers.UNet2DConditionModel(**cfg).to(device, dtype).eval()
    g = UNet(unet2d_condition_config(cfg, "sd15")).to(device, dtype).eval()
    g.load_state_dict(renamed(d.state_dict(), ""), strict=True)
    return d, g


def sd15_units(batch: int, device, cfg: dict = SD15_UNET) -> tuple[dict, dict]:
    """One guided denoising step of an SD-1.5-sized UNet (GPU): diffusers vs gmkit, bf16 weights."""
    d, g = sd_pair(cfg, device, torch.bfloat16)
    s, ch, width = cfg["sample_size"], cfg["in_channels"], cfg["cross_attention_dim"]
    x = torch.randn(2 * batch, ch, s, s, device=device, dtype=torch.bfloat16)
    ctx = torch.randn(2 * batch, 77, width, device=device, dtype=torch.bfloat16)
    t = torch.full((2 * batch,), 500, device=device)

    def step(net, call):
        @torch.inference_mode()
        def unit():
            out = call(net)
            c, u = out.chunk(2)
            (u + 7.5 * (c - u)).float()
        return unit

    dcall = lambda n: n(x, t, encoder_hidden_states=ctx, return_dict=False)[0]  # noqa: E731
    gcall = lambda n: n(x, t, context=ctx)  # noqa: E731
    units = {"diffusers eager": step(d, dcall),
             "diffusers compiled+cudagraphs": step(torch.compile(copy.deepcopy(d), mode="reduce-overhead"), dcall),
             "gmkit eager": step(g, gcall)}
    fast = copy.deepcopy(g)
    runtime.compile_module(fast, device)
    units["gmkit fast"] = step(fast, gcall)
    return units, {"parameters": sum(p.numel() for p in d.parameters())}


# -- the run ---------------------------------------------------------------------------------------

def hardware(device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "native_bf16": runtime.native_bf16(device)}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["cores"] = runtime.usable_cores()
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    import diffusers

    info["diffusers"] = diffusers.__version__
    return info


def ratios(times: dict[str, dict]) -> dict:
    """diffusers time / gmkit time for every pair, and against diffusers' best configuration."""
    d = {k: v["median_s"] for k, v in times.items() if k.startswith("diffusers")}
    g = {k: v["median_s"] for k, v in times.items() if k.startswith("gmkit")}
    best = min(d, key=d.get)
    out = {"diffusers_best": best}
    for gk, gv in g.items():
        for dk, dv in d.items():
            out[f"{dk} / {gk}"] = round(dv / gv, 3)
    return out


def run_task(workload: str, task: str, device, args, gpu_batch: int = 0) -> dict:
    cuda = torch.device(device).type == "cuda"
    bf16_cpu = not cuda and runtime.native_bf16(device)
    fast_precision = "bf16" if (cuda or bf16_cpu) else "fp32"
    model, unet, facts = pair(workload, device)
    if task == "train":
        batch = {"ddpm-mnist": 64 if not cuda else 128, "ddpm-cifar10": args.cifar_train_batch if not cuda else 128}[workload]
        units = {"diffusers eager": diffusers_train_unit(unet, batch, device, False, "bf16" if cuda else "fp32"),
                 "diffusers compiled": diffusers_train_unit(unet, batch, device, True, "bf16" if cuda else "fp32")}
        if bf16_cpu:
            units["diffusers compiled-bf16"] = diffusers_train_unit(unet, batch, device, True, "bf16")
        units["gmkit eager"] = gmkit_train_unit(model, batch, device, False, "bf16" if cuda else "fp32")
        units["gmkit fast"] = gmkit_train_unit(model, batch, device, True, fast_precision)
        scale, what = 1, f"one training step at batch {batch}"
    else:
        batch = {"ddpm-mnist": 16, "ddpm-cifar10": args.cifar_sample_batch}[workload] if not cuda else gpu_batch
        steps = args.cifar_steps if (workload == "ddpm-cifar10" and not cuda) else 50
        # Sampling in bf16 means bf16 weights on both sides (``gmkit sample --dtype bf16``;
        # diffusers' ``torch_dtype=torch.bfloat16``): no master weights to keep in fp32.
        half = torch.bfloat16
        dt = half if cuda else torch.float32
        units = {"diffusers eager": diffusers_ddim_unit(unet, batch, steps, device, False, dt),
                 "diffusers compiled": diffusers_ddim_unit(unet, batch, steps, device, True, dt,
                                                           mode="reduce-overhead" if cuda else None)}
        if bf16_cpu:
            units["diffusers compiled-bf16"] = diffusers_ddim_unit(unet, batch, steps, device, True, half)
        units["gmkit eager"] = gmkit_ddim_unit(model, batch, steps, device, False, dt)
        units["gmkit fast"] = gmkit_ddim_unit(model, batch, steps, device, True, half if (cuda or bf16_cpu) else dt)
        scale = 50 / steps
        what = f"DDIM-50 at batch {batch}" + (f" (timed over {steps} steps, scaled x{scale:g})" if scale != 1 else "")
    if args.configs:
        units = {k: v for k, v in units.items() if k in args.configs.split(",")}
    print(f"{workload} {task}: {what}", file=sys.stderr, flush=True)
    times = measure(units, args.rounds, device)
    for v in times.values():
        v["per_task_s"] = round(v["median_s"] * scale, 4)
        if task == "ddim50":
            v["images_per_s"] = round(batch / (v["median_s"] * scale), 3)
        else:
            v["steps_per_s"] = round(1 / v["median_s"], 3)
    return {"workload": workload, "task": task, "what": what, "batch": batch, **facts, "results": times,
            "ratios": ratios(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description="gmkit vs diffusers: same architectures and weights, one run.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workloads", default=None, help="comma-separated: ddpm-mnist, ddpm-cifar10, sd15 (GPU)")
    ap.add_argument("--tasks", default="train,ddim50")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--configs", default=None, help="only these configurations, e.g. 'diffusers eager,gmkit eager'")
    ap.add_argument("--cifar-train-batch", type=int, default=8)
    ap.add_argument("--cifar-sample-batch", type=int, default=4)
    ap.add_argument("--cifar-steps", type=int, default=5)
    ap.add_argument("--gpu-sample-batches", default="256,16", help="GPU: DDIM batch sizes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda and not os.environ.get("OMP_NUM_THREADS"):
        runtime.configure_threads()
    workloads = (args.workloads or ("ddpm-mnist,ddpm-cifar10,sd15" if cuda else "ddpm-mnist,ddpm-cifar10")).split(",")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    rows = []
    for w in workloads:
        if w == "sd15":
            if not cuda:
                print("sd15: GPU only, skipped", file=sys.stderr)
                continue
            for b in (1, 8):
                units, facts = sd15_units(b, device)
                times = measure(units, args.rounds * 4, device)
                for v in times.values():
                    v["steps_per_s"] = round(1 / v["median_s"], 3)
                rows.append({"workload": "sd15", "task": "guided step", "batch": b, **facts, "results": times,
                             "ratios": ratios(times)})
            continue
        for task in args.tasks.split(","):
            for b in ([int(v) for v in args.gpu_sample_batches.split(",")] if cuda and task == "ddim50" else [0]):
                rows.append(run_task(w, task, device, args, b))
                print(json.dumps({k: rows[-1][k] for k in ("workload", "task", "ratios")}), file=sys.stderr, flush=True)
    result = {"hardware": hardware(device), "load_average_before": load_before,
              "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "wall_s": round(time.perf_counter() - t0, 1), "rounds": args.rounds,
              "command": "python benchmarks/vs_diffusers.py " + " ".join(sys.argv[1:]), "rows": rows}
    out = Path(args.out or Path(__file__).parent / "results" / f"vs_diffusers_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps([{k: r[k] for k in ("workload", "task", "ratios")} for r in rows], indent=2))


if __name__ == "__main__":
    main()
