"""What every command shares: error handling, output modes (human, JSON, quiet), device choice."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass

import typer

from ..devices import resolve_device, resolve_dtype  # noqa: F401 (the commands import them from here)


@dataclass
class _State:
    debug: bool = bool(os.environ.get("GMKIT_DEBUG"))


STATE = _State()


# Settings whose flag is not simply --setting-name (library errors name settings; see errors.OptionError).
FLAGS = {"class_label": "--class", "n": "-n", "num_images": "-n", "json": "--json", "overrides": "--set"}


def flag(setting: str) -> str:
    """The command-line flag of a library setting: ``class_label`` -> ``--class``, ``steps`` -> ``--steps``."""
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


def error_line(e: Exception) -> str:
    from ..errors import OptionError

    return e.render(flag) if isinstance(e, OptionError) else str(e)


def run_app(app: typer.Typer) -> None:
    """Run the app. Exit codes: 0 success; 2 a user error (one line on stderr: a bad option, model, file or
    value, or a training run stopped by its family); 1 an internal error; 130 interrupted (Ctrl-C). Tracebacks
    only with --debug or GMKIT_DEBUG=1."""
    try:  # Typer >= 0.16 carries its own copy of click
        from typer import _click as click
    except ImportError:  # pragma: no cover - older Typer
        import click

    import signal

    from ..errors import GmkitError

    # SIGTERM as Ctrl-C: every command then unwinds, so atomic writes remove their temporary files and
    # training saves a checkpoint; the exit code is 130 either way.
    try:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        pass
    try:
        code = app(standalone_mode=False)  # click returns (not raises) an Exit's code in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except GmkitError as e:
        if STATE.debug:
            traceback.print_exc()
        print(f"gmkit: error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gmkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("gmkit: aborted", file=sys.stderr)
        sys.exit(1)
    except click.exceptions.ClickException as e:  # usage errors: one line, as every other error
        path = e.ctx.command_path if isinstance(e, click.exceptions.UsageError) and e.ctx is not None else "gmkit"
        where = f" (see {path} --help)"
        print(f"gmkit: error: {e.format_message()}{where}", file=sys.stderr)
        sys.exit(e.exit_code)
    except MemoryError:
        if STATE.debug:
            raise
        print("gmkit: error: out of memory; try a smaller --batch-size or -n", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # unexpected failures
        if STATE.debug:
            raise
        if _out_of_memory(e):
            print(f"gmkit: error: out of memory ({str(e).splitlines()[0][:120]}); try a smaller --batch-size or -n",
                  file=sys.stderr)
            sys.exit(2)
        print(f"gmkit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


def _out_of_memory(e: Exception) -> bool:
    """torch's allocation failures (CPU: "can't allocate memory"; CUDA: OutOfMemoryError)."""
    text = str(e)
    return type(e).__name__ == "OutOfMemoryError" or isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower())


def positive(name: str, value: int | None) -> None:
    from ..errors import GmkitError

    if value is not None and value < 1:
        raise GmkitError(f"{name} must be a positive integer, got {value}")


def parse_int_list(name: str, text: str) -> list[int]:
    from ..errors import GmkitError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GmkitError(f"{name} {text!r}: expected comma-separated integers, e.g. 10,50") from None
    if not values or any(v < 1 for v in values):
        raise GmkitError(f"{name} {text!r}: values must be positive integers")
    return values


DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."
REVISION_HELP = "Hub repos: the branch, tag, commit or refs/pr/N to read (also MODEL@REVISION)."
TOKEN_HELP = "Hub repos: a Hugging Face token for private or gated repos (default: HF_TOKEN or `hf auth login`)."
# Commands over several models (bench, compare): one --revision names the one Hub repo among them.
MULTI_REVISION_HELP = ("Hub repos: the branch, tag, commit or refs/pr/N of the one Hub repo in --models (with several, "
                       "write each as org/name@REVISION).")
MULTI_TOKEN_HELP = ("Hub repos: a Hugging Face token for every Hub repo in --models and a Hub --extractor "
                    "(default: HF_TOKEN or `hf auth login`).")
DTYPE_HELP = "auto (fp32 on CPU, bf16 on GPU), fp32, fp16 or bf16."
