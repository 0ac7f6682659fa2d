"""What every command shares: error handling, output modes (human, JSON, quiet), device choice."""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass

import typer


@dataclass
class _State:
    debug: bool = bool(os.environ.get("GMKIT_DEBUG"))


STATE = _State()


def say(msg: str, quiet: bool = False) -> None:
    """A message for people: stderr, so stdout stays clean for data."""
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def run_app(app: typer.Typer) -> None:
    """Run the app; user errors become one line on stderr and exit code 2 (tracebacks with --debug)."""
    from ..errors import GmkitError

    try:
        code = app(standalone_mode=False)  # click returns (not raises) an Exit's code in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except GmkitError as e:
        if STATE.debug:
            traceback.print_exc()
        print(f"gmkit: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gmkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("gmkit: aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # usage errors (Typer's click) and unexpected failures
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        if STATE.debug:
            raise
        print(f"gmkit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


def resolve_device(name: str):
    import torch

    from ..errors import GmkitError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GmkitError(f"--device {name}: unknown device (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GmkitError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise GmkitError(f"--device {name}: MPS is not available on this machine")
    return dev


def resolve_dtype(name: str, device):
    import torch

    from ..errors import GmkitError

    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise GmkitError(f"--dtype {name}: unknown (auto, fp32, fp16, bf16)")
    if table[name] == torch.float16 and device.type == "cpu":
        raise GmkitError("--dtype fp16 is not supported on the CPU; use fp32 or bf16")
    return table[name]


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
DTYPE_HELP = "auto (fp32 on CPU, bf16 on GPU), fp32, fp16 or bf16."
