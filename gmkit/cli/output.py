"""One output helper for every command: results on stdout, people's messages on stderr.

    out = Output(json_mode, quiet)
    out.message("gmkit: ...")          stderr, unless --quiet
    out.result(report, "human line")   stdout: the report as JSON with --json, else the line
    out.table(title, columns, rows)    stdout: a Rich table on a terminal, plain aligned columns in a pipe
    out.binary(data, "--out -")        stdout bytes; refused (one line) when stdout is a terminal

Errors never come through here: they are raised and printed by ``_common.run_app`` as one line.
"""

from __future__ import annotations

import json
import sys

from ..errors import GmkitError


class Output:
    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode, self.quiet = json_mode, quiet

    def message(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def result(self, data: dict, human: str | None = None) -> None:
        """The command's result: JSON with --json, else ``human`` (nothing if None) on stdout."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        elif human is not None:
            sys.stdout.write(human + "\n")
        sys.stdout.flush()

    def lines(self, texts: list[str]) -> None:
        """Human result lines (verdicts, summaries) on stdout; nothing in JSON mode (the JSON holds them)."""
        if not self.json_mode:
            for t in texts:
                sys.stdout.write(t + "\n")
            sys.stdout.flush()

    def table(self, title: str, columns: list[str], rows: list[list[str]], right: set[str] = frozenset(),
              lines: bool = False) -> None:
        """A table on stdout (nothing in JSON mode: the JSON holds the numbers)."""
        if self.json_mode:
            return
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            t = Table(title=title, show_lines=lines)
            for c in columns:
                t.add_column(c, justify="right" if c in right else "left", overflow="fold")
            for r in rows:
                t.add_row(*r)
            Console().print(t)
            return
        sys.stdout.write(plain_table(title, columns, rows, right) + "\n")
        sys.stdout.flush()

    def binary(self, data: bytes, what: str = "--out -") -> None:
        refuse_terminal(what)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def refuse_terminal(what: str = "--out -") -> None:
    """Binary data never goes to a terminal: one line saying how to redirect it."""
    if sys.stdout.isatty():
        raise GmkitError(f"{what}: stdout is a terminal; redirect it (> file) or pipe it into another command")


def plain_table(title: str, columns: list[str], rows: list[list[str]], right=frozenset()) -> str:
    """Aligned columns without box drawing or colour: readable in a pipe, a log file or ``less``.
    Rich markup such as ``[dim]`` is dropped."""
    import re

    clean = [[re.sub(r"\[/?[a-z ]+\]", "", str(c)) for c in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in clean]) for i, c in enumerate(columns)]

    def fmt(cells):
        return "  ".join((c.rjust(w) if columns[i] in right else c.ljust(w)) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"# {title}", fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in clean]
    return "\n".join(out)
