"""Names read from the user: a bundled name that is also a local path, and Hub ids.

A bundled name that is also a local path (``vae/`` after ``gmkit sample vae --out vae/``, a folder
``digits/`` beside ``--data digits``): which one a command means, said in one note.

An explicit path (``./vae``, ``/data/digits``) always means the path. A bare bundled name means the
local folder only when that folder is itself a source of the kind asked for (a model, a data set),
and the bundled one otherwise; when both exist, a note on stderr says which was used and how to
name the other.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable


def use_bundled(name: str, is_bundled: bool, is_source: Callable[[Path], bool], what: str,
                other: str = "") -> bool:
    """Whether ``name`` means the bundled ``what`` (True) or the local path of that name (False).
    ``other``: how to reach the bundled one when the local folder wins (e.g. ``digits:train``)."""
    path = Path(name)
    if not is_bundled:
        return False
    if not path.exists():
        return True
    if name.startswith((".", "/", "~")):
        return False
    if is_source(path):
        hint = f"; the bundled one is {other}" if other else "; rename the folder to reach the bundled one"
        print(f"gmkit: {name}: using the local {'folder' if path.is_dir() else 'file'} ./{name} (a {what}), not the "
              f"bundled {what} of that name{hint}", file=sys.stderr)
        return False
    print(f"gmkit: {name}: using the bundled {what} (the local {'folder' if path.is_dir() else 'file'} "
          f"./{name} is not a {what}; write ./{name} to mean it)", file=sys.stderr)
    return True


HUB_REPO = r"[A-Za-z0-9][\w.-]*/[\w.-]+"  # owner/name, the shape of a Hub repo id (check_hub_id checks it fully)
HUB_ID = re.compile(rf"^{HUB_REPO}$")  # a bare repo id: no revision, no subfolder
_HUB_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def check_hub_id(repo: str, revision: str | None = None, subfolder: str | None = None) -> None:
    """Refuse a malformed Hub id in one line before any network call: the Hub's own rules for names
    (letters, digits, ``-_.``; at most 96 characters; no ``--`` or ``..``), a revision of branch/tag
    characters (``refs/pr/3`` too) and subfolder segments that are never ``..``."""
    from .errors import GmkitError

    text = repo + (f"@{revision}" if revision else "") + (f"/{subfolder}" if subfolder else "")
    shown = text if len(text) <= 80 else text[:77] + "..."
    if len(text) > 512:
        raise GmkitError(f"{shown}: a Hub id of {len(text):,} characters is not a model source")
    for part in repo.split("/"):
        if len(part) > 96 or not _HUB_PART.match(part) or ".." in part or "--" in part:
            raise GmkitError(f"{shown}: {part[:40]!r} is not a valid Hub name (letters, digits, - _ . ; "
                             "at most 96 characters; no '--' or '..')")
    if revision is not None and (not re.fullmatch(r"[\w.+/-]{1,255}", revision) or ".." in revision
                                 or revision.startswith("/")):
        raise GmkitError(f"{shown}: {revision[:40]!r} is not a valid revision (a branch, tag or commit)")
    if subfolder is not None and any(seg in ("", ".", "..") or not re.fullmatch(r"[\w. +-]+", seg)
                                     for seg in subfolder.split("/")):
        raise GmkitError(f"{shown}: {subfolder[:40]!r} is not a valid subfolder (no '..', empty or odd segments)")
