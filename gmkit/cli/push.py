"""``gmkit push RUN REPO``: upload a trained checkpoint with a generated model card to the Hub."""

from __future__ import annotations

from typing import Optional

import typer

from .output import Output


def push_cmd(
    run: str = typer.Argument(..., help="Run folder (its model.safetensors) or a gmkit .safetensors checkpoint."),
    repo: str = typer.Argument(..., help="Hub repo id to create or update, e.g. yourname/gmkit-mnist-ddpm."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the folder that would be uploaded, and upload nothing."),
    out: Optional[str] = typer.Option(None, "--out", "-o", "--output", show_default="RUN/hub-upload for a dry run", help="Where to write that folder."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message."),
    fmt: str = typer.Option("gmkit", "--format", help="gmkit (one model.safetensors) or diffusers (model_index.json + component folders, as gmkit export writes)."),
    license_id: Optional[str] = typer.Option(None, "--license", help="The card's licence id (default: from the training data, e.g. cc-by-sa-4.0 for OpenMoji)."),
    keep_paths: bool = typer.Option(False, "--keep-local-paths", help="Keep absolute local paths in the card and the model's recipe (by default cut to their last component)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No messages."),
) -> None:
    """Upload a model to the Hugging Face Hub with a model card and a sample grid."""
    import shutil
    import tempfile
    from pathlib import Path

    from ..publish import checkpoint_of, prepare, upload

    ckpt = checkpoint_of(run)
    if out is not None:
        folder = Path(out)
    elif dry_run:
        folder = ckpt.parent / "hub-upload"
    else:
        folder = Path(tempfile.mkdtemp(prefix="gmkit-push-"))
    temporary = out is None and not dry_run
    try:
        files = prepare(run, repo, folder, replace=out is None and dry_run, fmt=fmt, license_id=license_id,
                        keep_paths=keep_paths)
        url = None if dry_run else upload(folder, repo, private, message)
    finally:  # the copy made only to upload goes on success, failure and Ctrl-C alike
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    report = {"run": run, "repo": repo, "folder": None if temporary else str(folder), "files": files, "uploaded": not dry_run, "url": url}
    Output(json_out, quiet).result(report, f"dry run: wrote {', '.join(files)} to {folder} (nothing uploaded)" if dry_run
                                   else f"uploaded {', '.join(files)} to {url}")


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)
