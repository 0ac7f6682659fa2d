"""Multi-file Hub repos (diffusers pipelines): list, then download only the files a pipeline needs.

The environment is read at call time (``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` / ``HF_HOME``), as
``gmkit.registry`` does for single-file checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import GmkitError


def hub_env() -> tuple[bool, str | None]:
    """(offline, cache_dir) from the environment of this call."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    return offline, cache


@dataclass
class RepoFiles:
    """A folder-like view of a pipeline: which files exist, and a way to have some of them on disk.

    ``fetch(paths)`` returns the local root under which those relative paths now exist.
    """

    label: str
    names: set[str]
    fetch: Callable[[list[str]], Path]


def local_files(root: Path, label: str) -> RepoFiles:
    root = Path(root)
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    def fetch(paths: list[str]) -> Path:
        for p in paths:
            if not (root / p).is_file():
                raise GmkitError(f"{label}: missing file {p}")
        return root

    return RepoFiles(label, names, fetch)


def hub_pipeline_files(repo: str, revision: str | None, subfolder: str | None) -> RepoFiles | None:
    """The repo as ``RepoFiles`` when it holds a diffusers ``model_index.json``; None when it does not
    (or when it cannot be reached and is not cached: the caller then reports that)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline, cache = hub_env()
    label = repo + (f"@{revision}" if revision else "") + (f"/{subfolder}" if subfolder else "")
    try:
        index = Path(hf_hub_download(repo, "model_index.json", subfolder=subfolder, revision=revision,
                                     cache_dir=cache, local_files_only=offline))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    except RepositoryNotFoundError:
        raise GmkitError(f"{repo}: no such Hub repository (or it is private: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise GmkitError(f"{repo}: no revision {revision!r}") from None
    except OSError as e:
        raise GmkitError(f"{label}: download failed ({e})") from None
    root = index.parent
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    if offline:
        return local_files(root, label)
    try:
        from huggingface_hub import HfApi

        listed = HfApi().list_repo_files(repo, revision=revision)
    except Exception as e:  # noqa: BLE001 - any failure to list: name it in one line
        raise GmkitError(f"{label}: cannot list the repository's files ({type(e).__name__}: {e})") from None
    names = {n[len(prefix):] for n in listed if n.startswith(prefix)}

    def fetch(paths: list[str]) -> Path:
        missing = [p for p in paths if p not in names]
        if missing:
            raise GmkitError(f"{label}: missing file {missing[0]}")
        try:
            snap = snapshot_download(repo, revision=revision, cache_dir=cache,
                                     allow_patterns=[prefix + p for p in paths])
        except OSError as e:
            raise GmkitError(f"{label}: download failed ({e})") from None
        return Path(snap) / prefix if prefix else Path(snap)

    return RepoFiles(label, names, fetch)
