"""``gmkit models``: what is bundled and what is in the Hugging Face cache, with sizes and capabilities."""

from __future__ import annotations

import typer

from ._common import emit_json


def models_cmd(json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout.")) -> None:
    """List bundled models and cached Hub models."""
    from ..models_list import bundled_models, cached_models

    bundled = bundled_models()
    cached = cached_models()
    if json_out:
        emit_json({"bundled": bundled, "cached": cached})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="bundled models (offline)")
    for col in ("name", "family", "size", "params", "capabilities", "about"):
        table.add_column(col)
    for m in bundled:
        table.add_row(m["name"], m["family"], f"{m['size_mb']:.1f} MB" if m["size_mb"] is not None else "missing",
                      f"{m['params'] / 1e6:.2f}M" if m["params"] else "-", ", ".join(m["capabilities"]), m["about"])
    console.print(table)
    if cached:
        t2 = Table(title="cached Hub models")
        for col in ("repo", "size", "revisions"):
            t2.add_column(col)
        for m in cached:
            t2.add_row(m["repo"], f"{m['size_mb']:.1f} MB", str(m["revisions"]))
        console.print(t2)
    else:
        console.print("[dim]no Hub models in the local cache[/dim]")


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
