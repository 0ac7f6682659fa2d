"""``gmkit models``: what is bundled and what is in the Hugging Face cache, with sizes and capabilities."""

from __future__ import annotations

import typer

from .output import Output


def models_cmd(json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout.")) -> None:
    """List bundled models and cached Hub models."""
    from ..models_list import bundled_models, cached_models

    bundled = bundled_models()
    cached = cached_models()
    output = Output(json_out)
    output.result({"bundled": bundled, "cached": cached})
    output.table("bundled models (offline)", ["name", "family", "size", "params", "capabilities", "about"],
                 [[m["name"], m["family"], f"{m['size_mb']:.1f} MB" if m["size_mb"] is not None else "missing",
                   f"{m['params'] / 1e6:.2f}M" if m["params"] else "-", ", ".join(m["capabilities"]), m["about"]]
                  for m in bundled], right={"size", "params"})
    if cached:
        output.table("cached Hub models", ["repo", "size", "revisions"],
                     [[m["repo"], f"{m['size_mb']:.1f} MB", str(m["revisions"])] for m in cached], right={"size", "revisions"})
    else:
        output.lines(["(no Hub models in the local cache)"])


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
