"""Self-describing safetensors checkpoints, written atomically.

A model checkpoint is one ``.safetensors`` file whose string metadata holds:
``gmkit.family`` (family name), ``gmkit.config`` (the family config as JSON), ``gmkit.version``
and ``gmkit.recipe`` (JSON: how it was trained, the exact command included). Nothing is pickled.
"""

from __future__ import annotations

import json
import mmap
import os
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import GmkitError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: an interrupted or failed save leaves the old file
    intact and no temporary file behind (SIGTERM is turned into an exception by the CLI, so it cleans up
    too; a kill -9 can leave a ``.NAME.XXXX.tmp``, which the next training run in that folder removes)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise GmkitError(f"{path}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, GmkitError):  # disk full, permissions, a folder named so
            raise GmkitError(f"{path}: cannot write it ({e.strerror or e})") from None
        raise


def write_text(path: Path, text: str) -> None:
    """A text file (a report, JSON, HTML) written atomically."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_figure(fig, path: Path, **kwargs) -> None:
    """A matplotlib figure written atomically (the format from ``path``'s suffix, not the temporary name's)."""
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, reading only its header."""
    return read_header(path).get("__metadata__", {}) or {}


def read_header(path: Path) -> dict:
    """A safetensors file's JSON header (tensor names, dtypes, shapes, metadata) without its data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000 or n > path.stat().st_size:
                raise ValueError("bad header length")
            return json.loads(f.read(n))
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GmkitError(f"{path}: not a valid safetensors file ({e}); is it truncated or corrupt?") from None


def copy_with_metadata(src: Path, dst: Path, metadata: dict[str, str]) -> None:
    """A copy of safetensors ``src`` at ``dst`` (atomically) with its string metadata replaced: only the header
    is rewritten and the tensor bytes are streamed, so a file of any size costs no memory."""
    import shutil

    header = read_header(src)
    with open(src, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
    header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors writes it

    def write(tmp):
        with open(src, "rb") as f, open(tmp, "wb") as out:
            out.write(len(raw).to_bytes(8, "little") + raw)
            f.seek(start)
            shutil.copyfileobj(f, out, 1 << 20)

    atomic_write(Path(dst), write)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise GmkitError(f"{path}: pickled weights are refused (they can run arbitrary code); "
                         "gmkit reads .safetensors checkpoints")
    if not path.is_file():
        raise GmkitError(f"{path}: no such checkpoint file")
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise GmkitError(f"{path}: cannot read checkpoint ({e}); is it truncated or corrupt?") from None
    return tensors, meta


def save_model(path: Path, family: str, config: dict, state: dict[str, torch.Tensor], recipe: dict | None = None,
               dtype: torch.dtype | None = None, extra: dict[str, str] | None = None) -> None:
    """Write a model checkpoint; ``dtype`` (e.g. fp16 for shipped defaults) casts floating tensors."""
    from . import __version__

    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {"gmkit.family": family, "gmkit.config": json.dumps(config), "gmkit.version": __version__,
            "gmkit.recipe": json.dumps(recipe or {})}
    meta.update(extra or {})
    save_tensors(path, state, meta)


# -- lazy reading: each tensor straight from the file into its final dtype ------------------------

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lies in a safetensors file (byte range of its data)."""

    path: Path
    start: int
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    def read(self) -> torch.Tensor:
        """The tensor, read with one ``readinto`` into memory of its own (no mmap: pages of the file
        never count as this process's memory, so loading peaks at the final weights plus one tensor)."""
        n = self.end - self.start
        buf = torch.empty(n, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.start)
            if n and f.readinto(memoryview(buf.numpy())) != n:
                raise GmkitError(f"{self.path}: truncated (tensor data ends early)")
        return buf.view(self.dtype).reshape(self.shape) if n else torch.empty(self.shape, dtype=self.dtype)

    def read_as(self, dtype: torch.dtype, memory_format: torch.memory_format) -> torch.Tensor:
        """The tensor converted to ``dtype`` / ``memory_format`` in one pass over the file's pages
        (mapped for this tensor only, then unmapped): no intermediate copy in the stored dtype."""
        n = self.end - self.start
        if n == 0 or (dtype == self.dtype and memory_format == torch.contiguous_format):
            return self.read()
        start = self.start - self.start % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), self.end - start, offset=start,
                                                   access=mmap.ACCESS_COPY) as mm:
            view = torch.frombuffer(mm, dtype=torch.uint8, count=n, offset=self.start - start)
            out = view.view(self.dtype).reshape(self.shape).to(dtype=dtype, memory_format=memory_format, copy=True)
            del view
        return out


def tensor_refs(path: Path) -> dict[str, TensorRef]:
    """Every tensor of a safetensors file, by name, from its header alone."""
    path = Path(path)
    header = read_header(path)
    with open(path, "rb") as f:
        base = 8 + int.from_bytes(f.read(8), "little")
    size = path.stat().st_size
    refs = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            start, end = (base + int(o) for o in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise GmkitError(f"{path}: tensor {name!r} has an unreadable or unsupported entry ({info})") from None
        count = 1
        for d in shape:
            count *= d
        if end > size or end - start != count * torch.empty((), dtype=dtype).element_size():
            raise GmkitError(f"{path}: tensor {name!r} does not fit the file; is it truncated or corrupt?")
        refs[name] = TensorRef(path, start, end, dtype, shape)
    return refs


Delta = Callable[[torch.Tensor], torch.Tensor]  # fp32 weight -> fp32 weight (a LoRA merge)


class LazyState(Mapping):
    """A state dict whose tensors stay on disk until read, one at a time.

    Entries are ``TensorRef``s (or tensors already in memory). ``deltas`` are changes merged into a
    weight as it is read (LoRA), in fp32 before the final cast. ``state[k]`` gives the tensor as
    stored (with deltas merged); ``load(k, dtype, device)`` gives it in a chosen dtype and layout.
    """

    def __init__(self, entries: dict | None = None):
        self.entries: dict[str, TensorRef | torch.Tensor] = dict(entries or {})
        self.deltas: dict[str, list[Delta]] = {}

    @classmethod
    def from_file(cls, path: Path) -> "LazyState":
        return cls(tensor_refs(path))

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.load(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.entries[key].dtype

    def update(self, other: "LazyState | dict") -> None:
        if isinstance(other, LazyState):
            self.entries.update(other.entries)
            for k, fns in other.deltas.items():
                self.deltas.setdefault(k, []).extend(fns)
        else:
            self.entries.update(other)

    def renamed(self, rename: Callable[[str], str]) -> "LazyState":
        out = LazyState({rename(k): v for k, v in self.entries.items()})
        out.deltas = {rename(k): list(v) for k, v in self.deltas.items()}
        return out

    def add_delta(self, key: str, fn: Delta) -> None:
        self.deltas.setdefault(key, []).append(fn)

    def load(self, key: str, dtype: torch.dtype | None = None, device=None,
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        entry = self.entries[key]
        fns = self.deltas.get(key)
        if isinstance(entry, TensorRef) and not fns and dtype is not None and entry.dtype.is_floating_point:
            return entry.read_as(dtype, memory_format).to(device)
        t = entry.read() if isinstance(entry, TensorRef) else entry
        if fns:
            stored = t.dtype
            t = t.float()
            for fn in fns:
                t = fn(t)
            t = t.to(stored if dtype is None else dtype)
        target = dtype if dtype is not None and t.is_floating_point() else t.dtype
        return t.to(device=device, dtype=target, memory_format=memory_format)


@contextmanager
def parameters_on_meta():
    """Build modules with their parameters on the meta device: no memory, no random init.

    Only parameters move (buffers and plain tensors computed in ``__init__``, such as noise
    schedules, stay real); the caller then assigns every parameter from a checkpoint with
    ``load_state_dict(..., assign=True)``. Random init of an SD-sized UNet alone takes ~17 s on a CPU.
    """
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original
