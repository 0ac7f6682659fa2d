"""The ``gmkit`` command line: one module per command. Parse, resolve, call, print; no model math.

Nothing here imports torch at module level, so ``gmkit --help`` answers instantly.
"""

from __future__ import annotations

from typing import Optional

import typer

from . import _common

app = typer.Typer(name="gmkit", invoke_without_command=True, add_completion=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train, sample, encode and benchmark generative models (VAE, GAN, flow, DDPM/DDIM, ...).")


@app.callback()
def _root(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
          threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per process (default: GMKIT_THREADS, OMP_NUM_THREADS, else the cores not already busy)."),
          version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)) -> None:
    if version:
        from .. import __version__

        typer.echo(__version__)
        raise typer.Exit()
    _common.STATE.debug = debug
    if ctx.invoked_subcommand is not None:
        from ..runtime import configure_threads  # no torch import: sets OMP_NUM_THREADS before torch loads

        configure_threads(threads)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _register() -> None:
    import importlib

    for name in ("train", "sample", "encode", "decode", "quantize", "bench", "compare", "metrics", "models", "likelihood", "push", "export"):
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            continue
        module.register(app)


_register()


def main() -> None:
    _common.run_app(app)
