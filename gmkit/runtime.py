"""How gmkit runs its networks on this machine: CPU threads, reduced precision, compilation.

Three small policies, each measured (benchmarks/vs_diffusers.py, docs/performance.md):

* **Threads.** An OpenMP thread that the OS deschedules stalls every barrier of every kernel, so a
  process with more threads than free cores runs far slower, not a little: two threads per
  process on a 2-core machine shared with other jobs were ~25x slower than one. The default is
  therefore the number of cores this process may use minus the load already on them (at least
  one). ``GMKIT_THREADS`` or ``configure_threads(n)`` (the CLI's ``--threads``) override it;
  an explicit ``OMP_NUM_THREADS`` is respected as the user's choice.
* **Precision.** bf16 autocast (weights stay fp32; convolutions and matrix products run in bf16,
  normalisations and the loss in fp32) where the hardware computes bf16 natively: CUDA GPUs with
  bf16, and CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower, so ``auto``
  falls back to fp32.
* **Compilation.** ``torch.compile`` with the settings that paid on each device: on CPU with
  weights frozen into the graph for inference (oneDNN weight prepacking, convolution + pointwise
  fusion); on CUDA with CUDA graphs ("reduce-overhead"), which remove the per-kernel launch cost
  that dominates small batches.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

PRECISIONS = ("auto", "fp32", "bf16")


# -- threads --------------------------------------------------------------------------------------

def usable_cores() -> int:
    """Physical cores this process may run on: its CPU affinity, less SMT siblings (Linux)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    per_core = 1
    try:  # "siblings" logical CPUs share "cpu cores" physical ones; OpenMP gains little from the extra
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]  # the first processor's block
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
        per_core = max(1, int(info["siblings"]) // int(info["cpu cores"]))
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    return max(1, logical // per_core)


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for one process: the usable cores not already busy (the 1-minute load average), >= 1."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - int(round(load))))


def configure_threads(threads: int | None = None) -> int:
    """Choose the intra-op thread count and return it: ``threads``, else ``GMKIT_THREADS``, else an
    ``OMP_NUM_THREADS`` already set (the user's choice), else ``default_threads()``.

    Sets ``OMP_NUM_THREADS`` for a torch imported later (and for child processes), and
    ``torch.set_num_threads`` if torch is already imported. Importing this module does not import torch.
    """
    import sys

    from .errors import OptionError

    env = os.environ.get("GMKIT_THREADS")
    if threads is None and env:
        try:
            threads = int(env)
        except ValueError:
            raise OptionError("threads", f"(GMKIT_THREADS={env!r}) must be a positive integer") from None
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    elif threads is None:
        threads = default_threads()
    if threads < 1:
        raise OptionError("threads", f"must be a positive integer, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# -- precision ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX-BF16)."""
    # torch reports only "AVX512" (which emulates bf16), so read the flags (Linux; elsewhere: fp32).
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def native_bf16(device) -> bool:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device) -> str:
    """``auto`` -> ``bf16`` where the device computes bf16 natively, else ``fp32``."""
    from .errors import OptionError

    if precision not in PRECISIONS:
        raise OptionError("precision", f"unknown value {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextlib.contextmanager
def autocast(device, precision: str = "fp32") -> Iterator[None]:
    """bf16 autocast on ``device`` for ``precision`` bf16 (or auto where native); a no-op for fp32."""
    import torch

    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16" and device.type in ("cpu", "cuda"):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


# -- compilation ----------------------------------------------------------------------------------

def compile_options(device, training: bool) -> dict:
    """``torch.compile`` keyword arguments for a network on ``device``.

    CUDA, inference: CUDA graphs ("reduce-overhead"): one replay per network call instead of
    hundreds of kernel launches, which dominate small batches. CPU, inference: Inductor's
    *freezing*: the (then constant) weights are folded into the graph, prepacked for oneDNN, and
    convolutions fused with the pointwise operations around them. Training keeps the defaults
    (weights change every step; CUDA graphs would pin the optimizer's inputs).
    """
    import torch

    device = torch.device(device)
    if training:
        return {}
    if device.type == "cuda":
        return {"mode": "reduce-overhead"}
    if device.type == "cpu":
        return {"options": {"freezing": True}}
    return {}


def compile_module(module, device, training: bool = False):
    """``torch.compile`` ``module`` in place with ``compile_options``; weights and names are kept."""
    module.compile(**compile_options(device, training))
    return module


def compile_networks(model, device, training: bool = False) -> list:
    """Compile a family's networks in place with ``compile_options``; returns them.

    Sampling compiles the networks the family declares its samplers call
    (``Family.sampling_networks``); training compiles each direct child that holds trainable
    weights (a GAN's generator and discriminator, a UNet). The family's own Python (noising,
    losses, samplers) stays eager, so its random streams, resume and checkpoint names are unchanged.
    """
    if training:
        nets = [child for child in model.children() if any(p.requires_grad for p in child.parameters())]
    else:
        nets = list(model.sampling_networks())
    for net in nets:
        compile_module(net, device, training)
    return nets


def uncompiled(model):
    """``model`` with every in-place compilation undone (a copy made for a one-off eager pass)."""
    for module in model.modules():
        module._compiled_call_impl = None
    return model
