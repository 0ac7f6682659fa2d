"""Streamed data: examples decoded on the fly from shards, never cached, in an order drawn from the seed.

For sources larger than a decoded cache should be (Hugging Face datasets with ``streaming=True``,
webdataset-style tar shards). The data splits into ``U = ranks x workers`` *substreams*: substream u
reads shards u, u+U, ... of each epoch's seeded shard order (or, with fewer shards than substreams,
every U-th example of all of them) through a seeded shuffle buffer, epoch after epoch, forever.
Training step s of a rank takes one local batch from that rank's substream ``s mod workers``, which
is exactly DataLoader's round-robin over its workers.

Each batch carries its substream's position after it (epoch, raw examples read in that epoch), so a
checkpoint knows where every substream stopped; resume re-reads (without decoding) up to there and
goes on with the same examples a run without interruption would have seen, bad images included.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .dataset import ImageData
from .decode import DecodeSpec, UnusableImage, decode

SHUFFLE_BUFFER = 1000


@dataclass
class StreamSource:
    """Shards of raw examples: ``open_shard(i)`` yields dicts {column: raw payload, "label": int,
    "caption": [str]}; ``describe(i, ex)`` names an example in messages. Picklable (workers get a copy)."""
    name: str
    note: str
    num_shards: int
    open_shard: Callable[[int], Iterator[dict]]
    describe: Callable[[int, dict], str]
    image_columns: tuple[str, ...] = ("image",)
    class_names: list[str] | None = None
    count: int | None = None  # examples, when the source says


def _mix(*xs: int) -> int:
    """A seed from several integers (splitmix64 over their sequence): independent streams per (seed, epoch, u)."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


class StreamData(ImageData, torch.utils.data.IterableDataset):
    streamed = True

    def __init__(self, source: StreamSource, size: int, channels: dict[str, int], stored: int, on_bad: str,
                 buffer: int = SHUFFLE_BUFFER):
        self.source = source
        self.name, self.note = source.name, source.note
        self.image_columns = source.image_columns
        self.class_names = source.class_names
        self._count = source.count
        self.stored, self.on_bad, self.buffer = stored, on_bad, buffer
        self.channels = channels
        self.shapes = {c: (channels[c], size, size) for c in self.image_columns}
        self.specs = {c: DecodeSpec(channels[c], stored) for c in self.image_columns}
        # Set by the loader before iteration (copied into each worker):
        self.plan: dict | None = None

    # -- one substream -----------------------------------------------------------------------
    def _raw(self, u: int, units: int, seed: int, epoch: int) -> Iterator[dict]:
        """Raw examples of substream ``u`` of ``units`` in epoch ``epoch``, before shuffling."""
        n = self.source.num_shards
        order = np.random.default_rng(_mix(seed, epoch)).permutation(n) if seed >= 0 else np.arange(n)
        if n >= units:
            for shard in order[u::units]:
                yield from self.source.open_shard(int(shard))
        else:  # fewer shards than readers: every reader reads everything and keeps its share
            k = 0
            for shard in order:
                for ex in self.source.open_shard(int(shard)):
                    if k % units == u:
                        yield ex
                    k += 1

    def _shuffled(self, raw: Iterator[dict], seed: int, epoch: int, u: int) -> Iterator[dict]:
        if self.buffer <= 1 or seed < 0:
            yield from raw
            return
        rng = np.random.default_rng(_mix(seed, epoch, u, 1))
        buf: list = []
        for ex in raw:
            if len(buf) < self.buffer:
                buf.append(ex)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], ex = ex, buf[j]
            yield ex
        rng.shuffle(buf)
        yield from buf

    def substream(self, u: int, units: int, seed: int, epoch: int = 0, skip: int = 0) -> Iterator[tuple]:
        """(decoded example, epoch, raw position after it) forever; the first ``skip`` raw examples of
        ``epoch`` are read but not decoded (resume)."""
        reported: set = set()
        while True:
            empty = True
            for pos, ex in enumerate(self._shuffled(self._raw(u, units, seed, epoch), seed, epoch, u), 1):
                empty = False
                if pos <= skip:
                    continue
                out = self._decode(ex, reported)
                if out is not None:
                    yield out, epoch, pos
            if empty:
                from ..errors import GmkitError

                raise GmkitError(f"{self.name}: a stream reader got no examples (substream {u} of {units})")
            epoch, skip = epoch + 1, 0

    def _decode(self, ex: dict, reported: set) -> dict | None:
        out = {}
        try:
            for c in self.image_columns:
                out[c] = torch.from_numpy(decode(ex[c], self.specs[c]))
        except (UnusableImage, KeyError) as e:
            what = self.source.describe(0, ex)
            reason = "missing" if isinstance(e, KeyError) else str(e)
            if self.on_bad == "error":
                from ..errors import GmkitError

                raise GmkitError(f"{what}: cannot read image ({reason})") from None
            if what not in reported and len(reported) < 20:
                reported.add(what)
                print(f"gmkit: skipping unreadable image {what} ({reason})", file=sys.stderr, flush=True)
            return None
        if ex.get("label") is not None:
            out["label"] = torch.tensor(int(ex["label"]))
        return out

    # -- batches -----------------------------------------------------------------------------
    def __iter__(self):
        """Local batches of this rank's substream(s), from the position the loader set (``plan``)."""
        p = self.plan or {"rank": 0, "world": 1, "workers": 1, "batch": 1, "seed": 0, "start_step": 0, "positions": {}}
        info = torch.utils.data.get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)
        logical = (w + p["start_step"]) % W  # DataLoader starts its round-robin at worker 0
        u, units = p["rank"] * W + logical, p["world"] * W
        epoch, skip = p["positions"].get(str(u), (0, 0))
        yield from self._batches(self.substream(u, units, p["seed"], epoch, skip), p["batch"], u)

    def _batches(self, examples: Iterator[tuple], size: int, u: int) -> Iterator[dict]:
        while True:
            got = [next(examples) for _ in range(size)]
            batch = {k: torch.stack([g[0][k] for g in got]) for k in got[0][0]}
            batch["stream_state"] = torch.tensor([u, got[-1][1], got[-1][2]])
            yield batch

    def batches(self, batch_size: int = 256) -> Iterator[dict]:
        """One pass over the data in its own order (no shuffling), as float batches."""
        reported: set = set()
        group: list = []
        done = 0
        for shard in range(self.source.num_shards):
            for ex in self.source.open_shard(shard):
                out = self._decode(ex, reported)
                if out is not None:
                    group.append(out)
                if len(group) == batch_size:
                    yield self._finish(self._stack(group, done))
                    done, group = done + len(group), []
        if group:
            yield self._finish(self._stack(group, done))

    def _stack(self, group: list[dict], start: int) -> dict:
        batch = {k: torch.stack([g[k] for g in group]) for k in group[0]}
        batch["index"] = torch.arange(start, start + len(group))  # position in this pass
        return batch

    @property
    def count(self) -> int | None:
        return self._count

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError("a streamed data set does not know its length")
        return self._count
