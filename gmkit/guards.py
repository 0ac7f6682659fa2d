"""Checks that run before a model is built for real: a config read from outside (a downloaded
checkpoint, a config file, ``--set``) must never make gmkit allocate gigabytes or run for minutes.

    check_config(family, config, where)        value bounds (config.check_bounds + the family's own)
    dry_build(family, config, where, ...)       the network built on the meta device (no memory), with a
                                                cap on parameters and modules enforced while it is built
    check_weights(family, config, shapes, path) the dry build's names and shapes against the tensors present
    check_finite(model, path)                   weights holding NaN/inf are refused after loading

The caps stop construction midway (a module-registration hook raises), so even a config asking for a
million layers costs a bounded time; the tensors' shapes are compared before a single weight is read.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .config import check_bounds
from .errors import GmkitError

# A model built to train (or a checkpoint whose file says nothing about its size) is capped here:
# 4 billion parameters (16 GB in fp32) and 200,000 modules; far beyond gmkit's families on one machine.
MAX_PARAMETERS = 4_000_000_000
MAX_MODULES = 200_000
# Construction failures that mean "this config cannot make a network" (zero sizes, bad combinations).
BUILD_ERRORS = (TypeError, ValueError, ZeroDivisionError, RuntimeError, AssertionError, IndexError, KeyError,
                AttributeError, OverflowError)


class _TooBig(Exception):
    pass


def check_config(family, config, where: str = "config"):
    """Sane bounds on every value of ``config`` (the family may declare its own in ``config_bounds``)."""
    check_bounds(config, where, family.config_bounds)
    return config


@contextmanager
def _capped(max_parameters: int, max_modules: int) -> Iterator[dict]:
    """Count parameters and modules as they are registered; stop construction past the caps."""
    from torch.nn.modules import module as torch_module

    seen = {"parameters": 0, "modules": 0}

    def on_parameter(module, name, param):
        if param is not None:
            seen["parameters"] += param.numel()
            if seen["parameters"] > max_parameters:
                raise _TooBig(f"over {max_parameters:,} parameters")

    def on_module(module, name, submodule):
        seen["modules"] += 1
        if seen["modules"] > max_modules:
            raise _TooBig(f"over {max_modules:,} layers")

    handles = [torch_module.register_module_parameter_registration_hook(on_parameter),
               torch_module.register_module_module_registration_hook(on_module)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


# Tensors a constructor asks for beyond this many elements are made on the meta device during a dry
# build; smaller ones stay real, so a family may compute with them in __init__ (a noise schedule's .item()).
# The parameter cap bounds what the small real ones add up to.
SMALL = 1 << 17


def _large_on_meta():
    """A torch function mode: factory calls (empty, zeros, randn, ...) for more than SMALL elements
    go to the meta device. Falls back to everything on meta if torch lacks the private helper."""
    try:
        from torch.overrides import TorchFunctionMode
        from torch.utils._device import _device_constructors
    except ImportError:  # pragma: no cover - other torch versions
        return torch.device("meta")
    constructors = _device_constructors()

    class LargeOnMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in constructors and kwargs.get("device") is None and _requested(args, kwargs) > SMALL:
                kwargs["device"] = "meta"
            return func(*args, **kwargs)

    return LargeOnMeta()


def _requested(args, kwargs) -> int:
    """Elements a factory call asks for: sizes as ints, or one sequence (``size=`` too); 0 if unknown."""
    size = kwargs.get("size")
    if size is None:
        size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
    dims = list(size) if isinstance(size, (tuple, list, torch.Size)) else []
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return 0
    return _numel(dims)


def dry_build(family, config, where: str, max_parameters: int = MAX_PARAMETERS, max_modules: int = MAX_MODULES,
              limit: str = ""):
    """``family(config)`` with its large tensors on the meta device (shapes only, no memory), refused past
    the caps (``limit`` says where they come from). ``where`` names the config: "the model config"."""
    try:
        with _large_on_meta(), _capped(max_parameters, max_modules):
            return family(config)
    except _TooBig as e:
        raise GmkitError(f"{where} asks for a network of {e}{limit}; refused before building it") from None
    except GmkitError:
        raise
    except BUILD_ERRORS as e:
        raise GmkitError(f"{where} cannot build a {family.name} model "
                         f"({type(e).__name__}: {e or 'a size or count is 0?'})") from None


def check_weights(family, config, shapes: dict[str, tuple[int, ...]], where) -> None:
    """The network a checkpoint's config describes against the tensors the file holds, before anything is
    allocated: the dry build may have at most as many parameters as the file (plus a little for
    buffers a family computes itself), and every name and shape must match."""
    stored = sum(_numel(s) for s in shapes.values())
    model = dry_build(family, config, f"{where}: its config", max_parameters=stored + 1_000_000,
                      max_modules=min(MAX_MODULES, 64 * len(shapes) + 1000),
                      limit=f" while the file holds {stored:,} numbers in {len(shapes):,} tensors")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise GmkitError(f"{where}: weights do not match the config ({detail.strip()})")
    for k, shape in expected.items():
        if shape != tuple(shapes[k]):
            raise GmkitError(f"{where}: tensor {k} has shape {tuple(shapes[k])}, the config needs {shape}")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def check_finite(model: torch.nn.Module, where) -> None:
    """Refuse weights holding NaN or infinity: they would sample black images with exit code 0."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            raise GmkitError(f"{where}: tensor {name} holds NaN or infinite values; the checkpoint is damaged")
