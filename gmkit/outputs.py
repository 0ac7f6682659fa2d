"""Where gmkit may write, checked before any work: nothing a command writes can destroy a model, mix
two runs' images, or leave a half-written file behind.

    check_output(out, ...)        writable; never a model checkpoint or one of the command's own inputs;
                                  an image folder that already holds images needs --overwrite
    clear_images(folder)          what --overwrite removes: the numbered images gmkit writes (0000.png ...)
    run_lock(folder)              one training process per run folder (a lock file; the kernel frees it
                                  if the process dies, so kill -9 leaves nothing to clean by hand)
    check_run_folder(out, ...)    an existing run is continued (--resume) or replaced (--overwrite), never
                                  silently overwritten
    remove_stale_temps(folder)    temporary files a killed process left (atomic writes: ``.NAME.XXXX.tmp``)

Torch-free, so the CLI can check before it imports anything heavy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import GmkitError, OptionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
NUMBERED = re.compile(r"^\d{4,}\.png$")  # what an image folder output is made of
RUN_FILES = ("model.safetensors", "train_state.safetensors", "log.jsonl")
OUTPUT_KINDS = ("images", "latents", "codes")  # gmkit.kind of files a command may replace


def check_writable(out: str, folder: bool = False) -> None:
    """Fail before any work if ``out`` (a file, or a folder) cannot be written."""
    if out == "-":
        return
    p = Path(out)
    probe = p if folder else p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK) or not _can_create(probe):
        raise GmkitError(f"--out {out}: cannot write there ({probe} is not a writable folder)")
    if p.is_dir() and not folder:
        raise GmkitError(f"--out {out}: is a folder; give a file name")


def _can_create(folder: Path) -> bool:
    """Whether a file can really be made in ``folder`` (os.access says yes to root even in /proc or /sys)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def is_model_file(path: Path) -> bool:
    """A safetensors file that is not one of the outputs commands write (images, latents, codes)."""
    from .checkpoint import read_metadata

    try:
        meta = read_metadata(path)
    except GmkitError:
        return False  # not safetensors at all: an ordinary file
    return meta.get("gmkit.kind") not in OUTPUT_KINDS


def check_output(out: str, folder: bool = False, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> None:
    """Refuse, before any work: an unwritable place, a model checkpoint or one of the command's own inputs
    as the output, and an image folder that already holds images (unless ``overwrite``)."""
    if out == "-":
        return
    check_writable(out, folder)
    p = Path(out)
    for source in inputs:
        if source is not None and str(source) != "-" and p.exists() and Path(source).exists() and \
                os.path.samefile(p, source):
            raise GmkitError(f"--out {out}: is an input of this command; write somewhere else")
    if folder:
        images = folder_images(p)
        if images and not overwrite:
            raise OptionError("overwrite", f"{{out}} {out}: holds {len(images)} image(s) already (e.g. {images[0].name}); "
                                           "pick an empty folder, or add {overwrite} to replace them, so a later "
                                           "metrics run never scores two runs' images together")
        foreign = [f for f in images if not NUMBERED.match(f.name)]
        if foreign:
            raise GmkitError(f"--out {out}: holds images gmkit did not write (e.g. {foreign[0].name}); "
                             "pick an empty folder")
    elif p.is_file() and p.suffix.lower() == ".safetensors" and is_model_file(p):
        raise GmkitError(f"--out {out}: is a model checkpoint; gmkit never writes over one (pick another name)")


def folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def clear_images(folder: Path) -> int:
    """Remove the numbered images of an earlier output (what ``--overwrite`` replaces); their count."""
    gone = 0
    for f in folder_images(Path(folder)):
        if NUMBERED.match(f.name):
            f.unlink()
            gone += 1
    return gone


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files of atomic writes that a killed process left in ``folder`` (and samples/)."""
    gone = 0
    for where in (Path(folder), Path(folder) / "samples"):
        if where.is_dir():
            for f in where.glob(".*.tmp"):
                try:
                    f.unlink()
                    gone += 1
                except OSError:
                    pass
    return gone


def check_run_folder(out: Path, resume: Path | None, overwrite: bool) -> bool:
    """Whether ``out`` holds a run; refuse to write a fresh run over it unless ``overwrite`` (then its
    run files go). Resuming run A into another existing run B is refused too."""
    out = Path(out)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if not existing:
        return False
    if resume is not None and Path(resume).resolve() == out.resolve():
        return True
    if not overwrite:
        family = _run_family(out)
        raise OptionError("overwrite", f"{out} already holds a run{' (' + family + ')' if family else ''}; continue it "
                                       f"with {{resume}} {out}, replace it with {{overwrite}}, or give another {{out}}")
    for name in existing:
        (out / name).unlink()
    shutil.rmtree(out / "samples", ignore_errors=True)
    return True


def _run_family(out: Path) -> str:
    from .checkpoint import read_metadata

    for name in ("model.safetensors", "train_state.safetensors"):
        try:
            meta = read_metadata(out / name)
            step = meta.get("gmkit.step") or json.loads(meta.get("gmkit.recipe", "{}") or "{}").get("step")
            return f"{meta.get('gmkit.family', '?')}" + (f", step {step}" if step is not None else "")
        except (GmkitError, OSError, ValueError):
            continue
    return ""


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.gmkit.lock`` for the duration: a second process training into the same folder
    gets one clear line. An advisory ``flock``: freed by the kernel when the holder exits or is killed."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".gmkit.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise GmkitError(f"{folder}: another gmkit process (pid {holder}) is training into this folder; "
                         "wait for it, or give another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        if folder.is_dir() and not any(f.name != path.name for f in folder.iterdir()):
            path.unlink(missing_ok=True)  # nothing was written (an early error): leave no empty run folder
            folder.rmdir()
        os.close(fd)  # closing releases the lock
