"""Hub repos and local folders behind one view: which files exist, and a way to have some on disk.

    org/name                    the main branch
    org/name@v1.0               a branch, tag or commit
    org/name@refs/pr/3          a pull-request ref (where converted safetensors usually live)
    org/name@rev/sub/folder     a subfolder of a revision; ``--revision`` takes any revision name

The repo is listed with one API call (its commit and file names). When the Hub cannot be
reached, the cached snapshot of that revision is used at once, with one line saying so (no
retries); ``HF_HUB_OFFLINE=1`` skips the network altogether. The environment (``HF_HUB_OFFLINE``,
``HF_HUB_CACHE`` / ``HF_HOME``) is read at call time.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import GmkitError
from ..names import HUB_REPO, check_hub_id

# A revision is one path segment, or a ref with slashes (refs/pr/N, refs/heads/x, refs/tags/x, refs/convert/x).
HUB_SOURCE = re.compile(rf"^(?P<repo>{HUB_REPO})(?:@(?P<rev>refs/(?:pr|heads|tags|convert)/[^/@]+|[^/@]+))?(?:/(?P<sub>[^@]+))?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# One listing call: a dead network fails at once (DNS, refused); a silent one after this many seconds
# (huggingface_hub's own knob for metadata calls, HF_HUB_ETAG_TIMEOUT, default 10).
def listing_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "10"))
    except ValueError:
        return 10.0


@dataclass(frozen=True)
class HubId:
    repo: str
    revision: str | None
    subfolder: str | None

    @property
    def label(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "") + (f"/{self.subfolder}" if self.subfolder else "")


def parse_hub_id(text: str, revision: str | None = None) -> HubId | None:
    """``org/name[@rev][/sub]`` -> HubId; ``revision`` (``--revision``) wins over an inline one."""
    m = HUB_SOURCE.match(text)
    if not m:
        return None
    if revision is not None and m["rev"] and m["rev"] != revision:
        raise GmkitError(f"{text}: names revision {m['rev']!r} but --revision says {revision!r}; give one")
    sub = (m["sub"] or "").strip("/") or None
    check_hub_id(m["repo"], revision or m["rev"], sub)  # malformed ids: one line, before any network call
    return HubId(m["repo"], revision or m["rev"], sub)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read at each call, as huggingface_hub's own flag is not)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_env() -> tuple[bool, str | None]:
    """(offline, cache_dir) from the environment of this call."""
    offline = hub_offline()
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    return offline, cache


@dataclass
class RepoFiles:
    """A folder-like view of a model source: its file names (relative, ``/``-separated) and
    ``fetch(paths)``, which returns the local root under which those paths now exist."""

    label: str
    names: set[str]
    fetch: Callable[[list[str]], Path]

    def sub(self, folder: str) -> "RepoFiles":
        """The view of one subfolder."""
        prefix = folder.strip("/") + "/"
        return RepoFiles(f"{self.label}/{folder}", {n[len(prefix):] for n in self.names if n.startswith(prefix)},
                         lambda paths: self.fetch([prefix + p for p in paths]) / folder)


def local_files(root: Path, label: str) -> RepoFiles:
    root = Path(root)
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    def fetch(paths: list[str]) -> Path:
        for p in paths:
            if not (root / p).is_file():
                raise GmkitError(f"{label}: missing file {p}")
        return root

    return RepoFiles(label, names, fetch)


def _cached_snapshot(hub: HubId, cache: str | None) -> Path | None:
    """The cached snapshot folder of this revision, or None."""
    from huggingface_hub.constants import HF_HUB_CACHE

    base = Path(cache or HF_HUB_CACHE) / ("models--" + hub.repo.replace("/", "--"))
    rev = hub.revision or "main"
    if COMMIT.match(rev) and (base / "snapshots" / rev).is_dir():
        return base / "snapshots" / rev
    # huggingface_hub files a revision under refs/<revision> (refs/refs/pr/1 for "refs/pr/1");
    # a hand-made cache may file a PR ref under refs/pr/1.
    for ref in (base / "refs" / rev, base / "refs" / rev.removeprefix("refs/")):
        if ref.is_file():
            commit = ref.read_text().strip()
            if (base / "snapshots" / commit).is_dir():
                return base / "snapshots" / commit
    return None


def _from_cache(hub: HubId, cache: str | None, why: str | None) -> RepoFiles:
    snap = _cached_snapshot(hub, cache)
    if snap is None:
        if why is None:
            raise GmkitError(f"{hub.label}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             "download it once with network access")
        raise GmkitError(f"{hub.label}: cannot reach the Hugging Face Hub ({why}) and it is not cached")
    if why is not None:
        print(f"gmkit: the Hugging Face Hub is unreachable ({why}); using the cached snapshot {snap.name[:10]} "
              f"of {hub.repo}", file=sys.stderr)
    root = snap / hub.subfolder if hub.subfolder else snap
    if not root.is_dir():
        raise GmkitError(f"{hub.label}: the cached snapshot has no folder {hub.subfolder}")
    return local_files(root, hub.label)


def network_error(e: Exception) -> str | None:
    """A short reason when ``e`` means "no network" (DNS, refused, timeout), else None."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        return None
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "TransportError",
                "ConnectionError", "Timeout", "OfflineModeIsEnabled", "TimeoutError", "OSError"}:
        return str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    return None


def hub_repo(hub: HubId, token: str | None = None) -> RepoFiles:
    """A Hub repo (at a revision, in a subfolder) as ``RepoFiles``, listed online or from the cache."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # pragma: no cover - a core dependency
        raise GmkitError("loading from the Hub needs huggingface-hub (pip install huggingface-hub)") from None
    offline, cache = hub_env()
    if offline:
        return _from_cache(hub, cache, None)
    try:
        info = HfApi(token=token).model_info(hub.repo, revision=hub.revision, timeout=listing_timeout())
    except RevisionNotFoundError:
        raise GmkitError(f"{hub.repo}: no revision {hub.revision!r}") from None
    except GatedRepoError:
        raise GmkitError(f"{hub.repo}: a gated repository: accept its terms on the Hub, then pass --token "
                         "or log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise GmkitError(f"{hub.repo}: no such Hub repository (or it is private: pass --token or log in with "
                         "`hf auth login`)") from None
    except HfHubHTTPError as e:
        raise GmkitError(f"{hub.label}: the Hub answered {str(e).splitlines()[0][:160]}") from None
    except Exception as e:  # noqa: BLE001 - any transport failure means: use the cache
        why = network_error(e)
        if why is None:
            raise
        return _from_cache(hub, cache, why)
    prefix = f"{hub.subfolder}/" if hub.subfolder else ""
    names = {s.rfilename[len(prefix):] for s in (info.siblings or []) if s.rfilename.startswith(prefix)}
    if not names:
        raise GmkitError(f"{hub.label}: the repository has no files{' in ' + hub.subfolder if hub.subfolder else ''}")

    def fetch(paths: list[str]) -> Path:
        missing = [p for p in paths if p not in names]
        if missing:
            raise GmkitError(f"{hub.label}: missing file {missing[0]}")
        try:
            # By revision name (not commit) so the cache files the ref and later offline runs find it.
            snap = snapshot_download(hub.repo, revision=hub.revision, cache_dir=cache, token=token,
                                     allow_patterns=[prefix + p for p in paths])
        except OSError as e:
            raise GmkitError(f"{hub.label}: download failed ({str(e).splitlines()[0][:200]})") from None
        return Path(snap) / hub.subfolder if hub.subfolder else Path(snap)

    return RepoFiles(hub.label, names, fetch)
