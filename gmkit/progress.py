"""Messages and progress for people, always on stderr (stdout stays clean for data and JSON).

``note`` prints one message. ``Progress`` is every long loop's bar: a Rich bar with totals and ETA
when stderr is a terminal; a short line every few seconds when it is not (a log file, CI), so
long runs still show life; nothing when quiet. ``GMKIT_PROGRESS_SECONDS`` sets that interval.
"""

from __future__ import annotations

import os
import sys
import time


def note(message: str, quiet: bool = False) -> None:
    """A message for people: stderr, so stdout stays clean for data."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("GMKIT_PROGRESS_SECONDS", "5")))
    except ValueError:
        return 5.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """``with Progress("train", total=10000) as p: p.update(done, "loss 0.03")``.

    ``total`` may be set later (``p.reset(total, label)``), e.g. once per sampled batch.
    """

    def __init__(self, label: str, total: int | None = None, quiet: bool = False, start: int = 0, unit: str = "step"):
        self.label, self.total, self.quiet, self.unit = label, total, quiet, unit
        self.tty = not quiet and sys.stderr.isatty()
        self._bar = self._task = None
        self._t0 = time.perf_counter()
        self._start = start
        self._done = start
        self._last_line = self._t0

    def __enter__(self) -> "Progress":
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(self.label, total=self.total, completed=self._done, info="")
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def reset(self, total: int | None, info: str = "") -> None:
        """Start counting again from 0 (a new batch of samples, say)."""
        self.total, self._done, self._start, self._t0 = total, 0, 0, time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, total=total, completed=0, info=info)

    def update(self, done: int, info: str = "") -> None:
        self._done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
            return
        if self.quiet:
            return
        now = time.perf_counter()
        if now - self._last_line < _interval():
            return
        self._last_line = now
        line = f"{self.label}: {self.unit} {done}" + (f"/{self.total}" if self.total else "")
        rate = (done - self._start) / max(now - self._t0, 1e-9)
        if self.total and done < self.total and rate > 0:
            line += f" ({100 * done / self.total:.0f}%, ETA {_duration((self.total - done) / rate)})"
        note(line + (f"  {info}" if info else ""))

    def callback(self):
        """A sampler callback ``(i, t, x)`` that advances this bar by one step; None when silent."""
        if self.quiet:
            return None

        def cb(i, t, x):
            self.update(i + 1)

        return cb
