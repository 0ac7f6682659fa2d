#!/usr/bin/env python3
"""Install gmkit with the right build of torch, then anything else given (``python scripts/install.py
".[all]"``; default ``.``). On Linux without an NVIDIA GPU, plain ``pip install torch`` downloads the
multi-GB CUDA build; this takes the small CPU build from download.pytorch.org instead, when that index
is reachable. Nothing is changed when torch is already installed, on a machine with a GPU, or on macOS
and Windows (whose default torch wheels are the right ones).

    python scripts/install.py && gmkit sample ldm --prompt "a red apple" --out apple.png
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def has_nvidia_gpu() -> bool:
    return bool(shutil.which("nvidia-smi")) or os.path.exists("/proc/driver/nvidia/version")


def reachable(url: str, seconds: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds):
            return True
    except Exception:  # any failure (offline, proxy, DNS) means: do not rely on it
        return False


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main(argv: list[str]) -> int:
    targets = argv or ["."]
    if importlib.util.find_spec("torch") is not None:
        print("torch is installed already: keeping it")
    elif platform.system() != "Linux" or has_nvidia_gpu():
        print("the default torch build fits this machine")
    elif reachable(f"{CPU_INDEX}/torch/"):
        pip("torch", "--index-url", CPU_INDEX)  # the CPU build: ~200 MB instead of several GB
    else:
        print(f"{CPU_INDEX} is unreachable: pip installs torch from your package index "
              "(on a CPU-only Linux machine that may be the large CUDA build)")
    pip("-e", *targets) if all(t.startswith(".") for t in targets) else pip(*targets)
    return 0


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
