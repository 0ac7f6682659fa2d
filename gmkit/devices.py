"""Device and dtype choice, shared by the CLI and the Python API (``device="auto"``, ``dtype="auto"``)."""

from __future__ import annotations

from .errors import OptionError

DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "bf16": "bfloat16", "bfloat16": "bfloat16"}


def torch_dtype(name: str):
    """The torch dtype of a name in DTYPE_NAMES (short or long: ``bf16`` or ``bfloat16``); torch is
    imported here, not at module level, so the CLI's help stays torch-free."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def resolve_device(name):
    """``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``, or a torch.device."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptionError("device", f"{name}: unknown device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", f"{name}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device", f"{name}: MPS is not available on this machine")
    return dev


def resolve_dtype(name, device):
    """``auto`` (fp32 on CPU, bf16 on GPU), ``fp32``, ``fp16``, ``bf16``, or a torch.dtype."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise OptionError("dtype", f"{name}: unknown (auto, fp32, fp16, bf16)")
    dtype = torch_dtype(name)
    if dtype == torch.float16 and device.type == "cpu":
        raise OptionError("dtype", "fp16 is not supported on the CPU; use fp32 or bf16")
    return dtype
