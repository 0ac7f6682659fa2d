"""Rich progress for sampler steps: shown on a terminal, silent in pipes or with --quiet."""

from __future__ import annotations

import sys


class StepProgress:
    def __init__(self, label: str, quiet: bool = False):
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn(f"[bold]{self.label}"), TextColumn("{task.fields[batch]}"), BarColumn(),
                                      MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def callback(self, batch: int, batches: int):
        """A sampler callback ``(i, t, x)`` that advances the bar; ``None`` when disabled."""
        if self._progress is None:
            return None
        if self._task is None:
            self._task = self._progress.add_task(self.label, total=None, batch="")
        task = self._task
        self._progress.update(task, completed=0, batch=f"batch {batch + 1}/{batches}" if batches > 1 else "")

        def cb(i, t, x):
            self._progress.update(task, completed=i + 1)

        return cb
