"""One training loop for every family: AdamW, EMA, grad clipping, AMP, exact resume, DDP.

Run folder written (rank 0 only):
    model.safetensors        EMA weights + config + recipe: what ``gmkit sample`` loads
    train_state.safetensors  raw weights, optimizer moments, step, RNG: what ``--resume`` needs
    log.jsonl                one JSON line per logged step
    samples/step_XXXXXXX.png a preview grid at each checkpoint

Exactness: the data order of epoch e is a permutation drawn from ``seed + e`` (streams: each
substream's position is saved) and the noise RNG is saved, so a run stopped at step k and resumed
matches an uninterrupted run (on CPU).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import __version__, runtime
from .checkpoint import load_tensors, save_model, save_tensors
from .config import TrainConfig, from_dict, to_dict
from .data.dataset import ImageData
from .data.loader import StreamPositions, augment_params, default_workers, make_loader, to_device
from .devices import torch_dtype
from .errors import GmkitError, StopTraining
from .families import Family
from .progress import Progress, note
from .tracking import make_tracker


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "cosine":
        length = cfg.lr_decay_steps or max(cfg.steps - cfg.warmup, 1)
        p = min((step - cfg.warmup) / length, 1.0)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * p))
    return cfg.lr


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and bytes: a cheap equality check across processes and files."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class EMA:
    """Exponential moving average of a model's floating-point state (Polyak averaging)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early weights are forgotten fast
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1 - d)
            else:
                self.shadow[k].copy_(v)


# -- distributed --------------------------------------------------------------------------------

def dist_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) when run plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_distributed(device: torch.device) -> None:
    if dist_info()[2] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


# -- state <-> safetensors ----------------------------------------------------------------------

def _optim_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"optim.{name}.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return tensors, {f"gmkit.optim.{name}": json.dumps(sd["param_groups"])}


def _load_optim(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    groups = json.loads(meta[f"gmkit.optim.{name}"])
    state: dict = {}
    prefix = f"optim.{name}."
    for key, val in tensors.items():
        if key.startswith(prefix):
            idx, field_name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[field_name] = val
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_run(out: Path, model: Family, ema: EMA, opts: dict, step: int, tcfg: TrainConfig, recipe: dict,
             data_state: dict | None = None, rank_rngs: list | None = None) -> None:
    family_cfg = to_dict(model.config)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    meta = {"gmkit.family": model.name, "gmkit.config": json.dumps(family_cfg), "gmkit.version": __version__,
            "gmkit.train": json.dumps(to_dict(tcfg)), "gmkit.step": str(step), "gmkit.recipe": json.dumps(recipe)}
    if data_state is not None:
        meta["gmkit.data_state"] = json.dumps(data_state)
    for name, opt in opts.items():
        t, m = _optim_tensors(name, opt)
        tensors.update(t)
        meta.update(m)
    tensors.update({f"extra.{k}": v for k, v in model.training_state().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    for r, state in enumerate(rank_rngs or []):
        if r > 0:  # DDP: every rank draws its own noise (rank 0's is rng.torch)
            tensors[f"rng.torch.{r}"] = state
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    # Model first, then state: a crash between the two leaves a usable model and the older state.
    save_model(out / "model.safetensors", model.name, family_cfg, ema.shadow, recipe | {"step": step},
               dtype=torch_dtype(tcfg.save_dtype))
    save_tensors(out / "train_state.safetensors", tensors, meta)


def read_train_state(run: Path) -> tuple[dict, dict]:
    path = run / "train_state.safetensors" if run.is_dir() else run
    if not path.is_file():
        raise GmkitError(f"--resume {run}: no train_state.safetensors there (was it written by gmkit train?)")
    return load_tensors(path)


# -- the loop -----------------------------------------------------------------------------------

def write_preview(model: Family, state: dict[str, torch.Tensor], path: Path, n: int) -> None:
    """A sample grid from the EMA weights, seeds 0..n-1, with the family's quick preview options."""
    import copy

    from .imageio import save_images

    m = runtime.uncompiled(copy.deepcopy(model)).eval()  # a compiled copy would recompile per preview
    m.load_state_dict(state)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    with torch.inference_mode():
        x = m.sample(gens, **m.preview_options)
    save_images(x, str(path))


def train(model: Family, data: ImageData, out: Path, tcfg: TrainConfig, device: torch.device,
          recipe: dict, resume_state: tuple[dict, dict] | None = None, quiet: bool = False,
          workers: int | None = None, log_with: str | None = None) -> dict:
    """Train ``model`` on ``data`` to ``tcfg.steps``; returns a summary. Rank 0 alone writes files.

    ``workers``: DataLoader worker processes (None: ``default_workers``); ``log_with``: an experiment
    tracker beside log.jsonl (tensorboard, wandb, trackio)."""
    rank, _, world = dist_info()
    setup_distributed(device)
    if tcfg.batch_size % world:
        raise GmkitError(f"--batch-size {tcfg.batch_size} does not split evenly over {world} processes")
    local_batch = tcfg.batch_size // world
    if tcfg.grad_accum < 1 or local_batch % tcfg.grad_accum:
        raise GmkitError(f"grad_accum {tcfg.grad_accum} must divide the per-process batch {local_batch}")
    if tcfg.grad_accum > 1 and not model.grad_accum_ok:
        raise GmkitError(f"{model.name} cannot accumulate gradients over micro-batches; use grad_accum 1")

    # channels_last: about 10% faster convolutions on CPU and GPU, same numbers.
    model.to(device, memory_format=torch.channels_last).train()
    if resume_state is not None:  # first: a resumed run precomputes with its trained first stage, not a fresh one
        tensors, meta = resume_state
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    # Families that precompute per-image work (latent diffusion: latents, caption states) do it once here.
    model.prepare_training(data, device, quiet or rank > 0)
    opts = model.optimizers(tcfg.lr, tcfg.weight_decay)
    ema = EMA(model, tcfg.ema_decay)
    step = 0
    if resume_state is not None:
        ema.shadow = {k[4:]: v.clone().float() for k, v in tensors.items() if k.startswith("ema.")}
        for name, opt in opts.items():
            _load_optim(name, opt, tensors, meta)
        model.load_training_state({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("extra.")})
        step = int(meta["gmkit.step"])
        torch.set_rng_state(tensors.get(f"rng.torch.{rank}", tensors["rng.torch"]))
        if "rng.cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    else:
        torch.manual_seed(tcfg.seed + rank)  # per-rank noise; weights were seeded before construction

    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if not data.streamed and len(data) == 0:
        raise GmkitError("the training data is empty")
    workers = default_workers(data, device) if workers is None else workers
    stream = StreamPositions(data, resume_state[1] if resume_state else None, max(workers, 1), world)
    loader = iter(make_loader(data, tcfg.batch_size, tcfg.seed, step, rank, world, workers, device.type == "cuda",
                              stream.positions))
    data_wait = 0.0  # seconds the loop waited for batches since the last log line
    use_amp = (tcfg.amp and device.type == "cuda") or (tcfg.cpu_amp and device.type == "cpu" and runtime.native_bf16(device))
    if tcfg.cpu_amp and device.type == "cpu" and not use_amp:
        note("gmkit: this CPU has no native bf16 (AVX512-BF16 or AMX); training in fp32", quiet or rank > 0)
    if tcfg.compile:
        runtime.compile_networks(model, device, training=True)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "log.jsonl", "a") if rank == 0 else None
    start_step, t_start, t_last, last_step = step, time.perf_counter(), time.perf_counter(), step
    interrupted = False
    summary: dict = {}
    info = ""

    tracker = make_tracker(log_with, out, {"train": to_dict(tcfg), "recipe": recipe}) if rank == 0 and log_with else None

    def checkpoint():
        data_state = stream.gathered()  # collectives under DDP: every rank calls checkpoint()
        rngs: list = [torch.get_rng_state()] * world
        if world > 1:
            dist.all_gather_object(rngs, torch.get_rng_state())
        if rank != 0:
            return
        save_run(out, model, ema, opts, step, tcfg, recipe, data_state, rngs)
        if tcfg.preview:
            grid = out / "samples" / f"step_{step:07d}.png"
            write_preview(model, ema.shadow, grid, tcfg.preview)
            if tracker is not None:
                tracker.log_image(step, "samples", grid)

    # The bar lives on stderr (stdout stays clean for --json): Rich on a terminal, a line every few
    # seconds otherwise, nothing when quiet or on other ranks.
    progress = Progress("train", tcfg.steps, quiet or rank > 0, start=step).__enter__()

    prev_handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # treat SIGTERM like Ctrl-C: save, then exit
    try:
        while step < tcfg.steps:
            t_wait = time.perf_counter()
            raw = next(loader)
            data_wait += time.perf_counter() - t_wait
            stream_state = raw.get("stream_state")
            batch = to_device(raw, data, device, augment_params(data, tcfg.batch_size, tcfg.seed, step, rank, world))
            for opt in opts.values():
                for g in opt.param_groups:
                    g["lr"] = lr_at(tcfg, step) * g.get("lr_scale", 1.0)  # a family's per-network ratio (TTUR)
            extra = {"accum": tcfg.grad_accum} if tcfg.grad_accum > 1 else {}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                stats = model.train_step(wrapped, batch, opts, step, tcfg.grad_clip, **extra)
            loss = stats["loss"]
            bad = torch.tensor(0.0 if math.isfinite(loss) else 1.0)
            if world > 1:
                dist.all_reduce(bad)
            if bad.item() > 0:
                raise GmkitError(f"loss became {loss} at step {step + 1}; training stopped. The last good checkpoint "
                                 f"in {out} is kept. Try a lower --lr or --set grad_clip=0.5")
            ema.update(model, step)
            step += 1
            stream.consumed(stream_state)  # only now: a checkpoint resumes after this batch
            if rank == 0 and (step % tcfg.log_every == 0 or step == tcfg.steps):
                now = time.perf_counter()
                its = (step - last_step) / max(now - t_last, 1e-9)
                wait_share = data_wait / max(now - t_last, 1e-9)
                t_last, last_step, data_wait = now, step, 0.0
                record = {"step": step, **{k: round(v, 6) for k, v in stats.items()}, "lr": lr_at(tcfg, step - 1),
                          "it_s": round(its, 3), "data_wait": round(wait_share, 4), "time": round(now - t_start, 2)}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                if tracker is not None:
                    tracker.log(step, record)
                info = f"loss {stats['loss']:.4f}  {its:.2f} it/s"
            progress.update(step, info)
            if step % tcfg.checkpoint_every == 0 and step < tcfg.steps:
                checkpoint()
    except KeyboardInterrupt:
        interrupted = True
    except StopTraining as e:  # the family's verdict (GAN mode collapse): keep the last checkpoint as it is
        if log_file is not None:
            log_file.write(json.dumps({"step": step, "stopped": str(e)}) + "\n")
        raise
    finally:
        signal.signal(signal.SIGTERM, prev_handler)
        progress.__exit__(None, None, None)
        if log_file is not None:
            log_file.close()
    if step > start_step or not (out / "model.safetensors").exists():
        checkpoint()
    if tracker is not None:
        tracker.close()
    del loader  # stop the loader's workers before the process group goes
    if world > 1:
        dist.barrier()
    elapsed = time.perf_counter() - t_start
    digest = state_digest(model.state_dict())
    agree = True
    if world > 1:
        digests: list = [None] * world
        dist.all_gather_object(digests, digest)
        agree = all(d == digest for d in digests)
    summary = {"out": str(out), "step": step, "steps_this_run": step - start_step, "seconds": round(elapsed, 2),
               "it_s": round((step - start_step) / max(elapsed, 1e-9), 3), "interrupted": interrupted,
               "world_size": world, "weights_sha256": digest, "ranks_agree": agree,
               "data": {"streamed": data.streamed, "loader_workers": workers, "cache_build_s":
                        None if data.build_seconds is None else round(data.build_seconds, 2)}}
    if interrupted:
        if rank == 0:
            note(f"gmkit: interrupted at step {step}; checkpoint saved in {out} (continue with --resume {out})")
        raise KeyboardInterrupt
    return summary


def load_resume_config(state: tuple[dict, dict], family: type[Family]):
    """The family and training configs a run was started with."""
    _, meta = state
    if meta.get("gmkit.family") != family.name:
        raise GmkitError(f"--resume: that run trained a {meta.get('gmkit.family')} model, not {family.name}")
    return from_dict(family.Config, json.loads(meta["gmkit.config"])), from_dict(TrainConfig, json.loads(meta["gmkit.train"]))
