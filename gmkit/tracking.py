"""Experiment trackers beside log.jsonl: ``--log-with tensorboard | wandb | trackio`` (off by default).

Each is imported only when asked for; a missing package is one line saying what to install. Every
log.jsonl record becomes scalars at its step, and each checkpoint's sample grid an image.
wandb runs offline unless ``WANDB_MODE`` says otherwise (gmkit never needs the network).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import GmkitError, OptionError

TRACKERS = ("tensorboard", "wandb", "trackio")


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GmkitError(f"log_with {package} needs the {package} package (pip install {package})") from None


def _grid(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class Tracker:
    def log(self, step: int, record: dict) -> None:
        raise NotImplementedError

    def log_image(self, step: int, name: str, path: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


class TensorBoard(Tracker):
    """Event files in RUN/tensorboard (``tensorboard --logdir RUN``)."""

    def __init__(self, out: Path, config: dict):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(str(out / "tensorboard"))
        import json

        self.w.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log(self, step, record):
        for k, v in _scalars(record).items():
            self.w.add_scalar(f"train/{k}", v, step)
        self.w.flush()

    def log_image(self, step, name, path):
        self.w.add_image(name, _grid(path), step, dataformats="HWC")
        self.w.flush()

    def close(self):
        self.w.close()


class WandbLike(Tracker):
    """wandb, or trackio (which keeps wandb's module-level API: init, log, Image, finish)."""

    def __init__(self, package: str, out: Path, config: dict):
        self.m = _need(package, package)
        extra = {}
        if package == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")
            extra["dir"] = str(out)
        self.m.init(project=os.environ.get(f"{package.upper()}_PROJECT", "gmkit"), name=out.name, config=config, **extra)

    def log(self, step, record):
        self.m.log(_scalars(record), step=step)

    def log_image(self, step, name, path):
        self.m.log({name: self.m.Image(str(path))}, step=step)

    def close(self):
        self.m.finish()


def check_tracker(kind: str | None) -> None:
    if kind and kind not in TRACKERS:
        raise OptionError("log_with", f"must be one of {', '.join(TRACKERS)}, got {kind!r}")


def make_tracker(kind: str, out: Path, config: dict) -> Tracker:
    check_tracker(kind)
    out.mkdir(parents=True, exist_ok=True)
    return TensorBoard(out, config) if kind == "tensorboard" else WandbLike(kind, out, config)
