"""Batches for the training loop: which examples each step reads, and how they reach the device.

The order is a pure function of (seed, step): global batch ``step`` is a slice of the permutation of
epoch ``step // batches_per_epoch`` drawn from the seed, and each rank reads only its own part of it.
A run resumed at step k therefore reads exactly what an uninterrupted run would, with any number of
loader workers. Random flips and crops are drawn per global batch from (seed, step) too, and applied
on the device to the uint8 images before they become floats.
"""

from __future__ import annotations

import json
import math

import torch

from ..errors import GmkitError
from .dataset import ImageData, centre_crop, to_float


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """The data indices of global batch ``step``: epochs are fresh permutations, last partial batch dropped."""
    per_epoch = max(n // batch, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = epoch_permutation(n, seed, epoch)
    if batch > n:  # tiny data sets: repeat the permutation to fill a batch
        perm = perm.repeat(math.ceil(batch / n))
    return perm[pos * batch:(pos + 1) * batch]


class StepBatches(torch.utils.data.Sampler):
    """This rank's indices of every global batch from ``start_step`` on, without end."""

    def __init__(self, n: int, batch: int, seed: int, start_step: int, rank: int, world: int):
        self.n, self.batch, self.seed, self.start, self.rank, self.world = n, batch, seed, start_step, rank, world

    def __iter__(self):
        local = self.batch // self.world
        per_epoch = max(self.n // self.batch, 1)
        step, epoch, perm = self.start, -1, None
        while True:
            if self.batch > self.n:
                idx = batch_indices(self.n, self.batch, self.seed, step)
            else:
                if step // per_epoch != epoch:  # one permutation per epoch, not per step (n may be millions)
                    epoch = step // per_epoch
                    perm = epoch_permutation(self.n, self.seed, epoch)
                pos = step % per_epoch
                idx = perm[pos * self.batch:(pos + 1) * self.batch]
            yield idx[self.rank * local:(self.rank + 1) * local].tolist()
            step += 1


def _whole(batch):
    return batch  # the data set's __getitems__ (or stream) already built the batch dict


def default_workers(data: ImageData, device: torch.device) -> int:
    """Loader workers when none are asked for: streams decode, so they need some; the cache is a
    memory copy per image, cheap enough for the training process itself unless a GPU waits."""
    import os

    cpus = os.cpu_count() or 1
    if data.streamed:
        return max(1, min(8, cpus - 1))
    return min(4, max(cpus - 1, 0)) if device.type == "cuda" else 0


def make_loader(data: ImageData, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1,
                workers: int = 0, pin_memory: bool = False, positions: dict | None = None):
    """A DataLoader yielding this rank's uint8 batches of global batch ``batch_size`` from ``start_step``."""
    common = dict(num_workers=workers, pin_memory=pin_memory, collate_fn=_whole,
                  generator=torch.Generator(),  # so creating the iterator leaves the global RNG alone (exact resume)
                  prefetch_factor=4 if workers else None, persistent_workers=workers > 0)
    if data.streamed:
        data.plan = {"rank": rank, "world": world, "workers": max(workers, 1), "batch": batch_size // world,
                     "seed": seed, "start_step": start_step, "positions": positions or {}}
        return torch.utils.data.DataLoader(data, batch_size=None, **common)
    sampler = StepBatches(len(data), batch_size, seed, start_step, rank, world)
    return torch.utils.data.DataLoader(data, batch_sampler=sampler, **common)


def augment_params(data: ImageData, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1) -> dict:
    """Flips and crop offsets for this rank's share of global batch ``step``, drawn for the whole
    global batch from (seed, step) alone: the same images get the same flips with any number of ranks."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 2 + 1)
    out = {}
    if data.random_flip:
        out["flip"] = torch.rand(batch_size, generator=g) < 0.5
    margin = data.stored - data.image_shape[-1]
    if data.random_crop and margin > 0:
        out["crop"] = torch.randint(0, margin + 1, (batch_size, 2), generator=g)
    local = batch_size // world
    return {k: v[rank * local:(rank + 1) * local] for k, v in out.items()}


def to_device(batch: dict, data: ImageData, device: torch.device, params: dict | None = None) -> dict:
    """A uint8 batch -> the training batch on ``device``: crops and flips (the same for every image
    column of an example, so paired images stay aligned), floats in [-1, 1], channels_last."""
    out = {}
    params = params or {}
    for key, val in batch.items():
        if key == "stream_state" or not torch.is_tensor(val):
            continue
        if key not in data.image_columns:
            out[key] = val.to(device, non_blocking=True) if key != "index" else val
            continue
        x = val.to(device, non_blocking=True)
        size = data.shapes[key][-1]
        if "crop" in params:
            x = torch.stack([x[i, :, t:t + size, s:s + size] for i, (t, s) in enumerate(params["crop"].tolist())])
        else:
            x = centre_crop(x, size)
        if "flip" in params:
            flip = params["flip"].to(device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        out[key] = to_float(x).contiguous(memory_format=torch.channels_last)
    return out


class StreamPositions:
    """Where each substream of a streamed source stands (epoch, raw examples read), for checkpoints.

    Cached sources need none of this: their order is a function of the step alone."""

    def __init__(self, data: ImageData, resume_meta: dict | None, workers: int, world: int):
        self.active, self.workers, self.world = data.streamed, workers, world
        self.positions: dict[str, list[int]] = {}
        saved = json.loads((resume_meta or {}).get("gmkit.data_state", "null") or "null") if self.active else None
        if saved is not None:
            if (saved["workers"], saved["world"]) != (workers, world):
                raise GmkitError(f"resume: the run streamed its data with {saved['workers']} loader worker(s) on "
                                 f"{saved['world']} process(es); resume with the same (workers {saved['workers']}) "
                                 "so every stream continues where it stopped")
            self.positions = saved["positions"]

    def consumed(self, state: torch.Tensor | None) -> None:
        if state is not None:
            u, epoch, pos = state.tolist()
            self.positions[str(u)] = [epoch, pos]

    def gathered(self) -> dict | None:
        """Every rank's positions (all ranks must call this together under torch.distributed)."""
        if not self.active:
            return None
        merged = dict(self.positions)
        if self.world > 1:
            import torch.distributed as dist

            parts: list = [None] * self.world
            dist.all_gather_object(parts, self.positions)
            for rank, part in enumerate(parts):  # a rank's own substreams are u = rank * workers + w
                merged.update({u: p for u, p in part.items() if int(u) // self.workers == rank})
        return {"workers": self.workers, "world": self.world, "positions": merged}
