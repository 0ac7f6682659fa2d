"""``gmkit metrics SAMPLES --reference REF --extractor NAME``: sample quality against any reference.

``gmkit metrics REF --save-stats ref.safetensors`` writes a reference's statistics instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import TOKEN_HELP
from .output import Output

EXTRACTOR_HELP = ("Feature extractor: inception (FID; the published pt_inception-2015-12-05 weights), dinov2, clip, "
                  "mnist, or a transformers vision model (folder or Hub id). Default: the reference's own "
                  "(mnist for the bundled digits, the one a statistics file was made with), else inception.")
WEIGHTS_HELP = "The published pt_inception-2015-12-05-6726825d.pth (read once, sha256-checked, cached as safetensors)."


def metrics_cmd(
    samples: str = typer.Argument(..., help="A folder of images or a .safetensors images tensor (as `sample --out x.safetensors` writes); with --save-stats, a reference."),
    reference: str = typer.Option("mnist", "--reference", help="Reference: a bundled data set, a folder, a Hugging Face dataset (anything --data takes; its held-out split), or a statistics file."),
    extractor: Optional[str] = typer.Option(None, "--extractor", help=EXTRACTOR_HELP),
    extractor_weights: Optional[str] = typer.Option(None, "--extractor-weights", help=WEIGHTS_HELP),
    save_stats: Optional[str] = typer.Option(None, "--save-stats", help="Write SAMPLES' reference statistics (mean, covariance, features) to this .safetensors file and stop."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="CLIP score: the prompt every image was made from."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="CLIP score: a text file with one prompt per image, in file order."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Also report the share classified as this class (mnist extractor)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub extractors (org/name, dinov2, clip): the branch, tag, commit or refs/pr/N to read (also --extractor org/name@REVISION)."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    device: str = typer.Option("cpu", "--device", help="Device for the extractor: cpu, cuda, mps."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """FD (FID with the inception extractor), KID, precision/recall and density/coverage against a reference, beside the real-vs-real baseline."""
    from ..errors import GmkitError
    from ..metrics.evaluate import evaluate, save_stats as write_reference

    output = Output(json_out, quiet)
    if save_stats:
        if not save_stats.endswith(".safetensors"):
            raise GmkitError(f"--save-stats {save_stats}: give a .safetensors path")
        command = (f"gmkit metrics {samples} --save-stats {save_stats}" + (f" --extractor {extractor}" if extractor else "")
                   + (f" --revision {revision}" if revision else ""))  # never the token
        ref = write_reference(samples, save_stats, extractor, extractor_weights, device=device, command=command,
                              revision=revision, token=token)
        info = {"stats": save_stats, "reference": ref.description, "extractor": ref.extractor,
                "features": list(ref.features.shape), "baseline_pool": len(ref.pool)}
        output.result(info)
        output.message(f"gmkit: {ref.description} through {ref.extractor}: {ref.features.shape[0]} x "
                       f"{ref.features.shape[1]} features, baseline pool {len(ref.pool)} -> {save_stats}")
        return
    result = evaluate(samples, reference, extractor, extractor_weights=extractor_weights, class_label=class_label,
                      prompts=_prompts(prompt, prompts), device=device, revision=revision, token=token)
    for w in result["warnings"]:  # never silenced, not even by --quiet
        print(f"gmkit: warning: {w}", file=sys.stderr, flush=True)
    for n in result["notes"]:
        output.message(f"gmkit: {n}")
    result["samples"] = samples
    output.result(result)
    _table(result, output)


def _prompts(prompt: str | None, path: str | None) -> list[str] | None:
    from ..errors import GmkitError

    if prompt is not None and path is not None:
        raise GmkitError("give --prompt or --prompts, not both")
    if path is None:
        return [prompt] if prompt is not None else None
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise GmkitError(f"--prompts {path}: cannot read it ({e})") from None
    if not lines:
        raise GmkitError(f"--prompts {path}: no prompts in it")
    return lines


def _table(result: dict, output: Output) -> None:
    names = result["names"]
    cols = ["", names["fd"], names["kid"], "precision", "recall", "density", "coverage"]
    rows = [("samples", result["metrics"])]
    if result["baseline_real_train_vs_heldout"]:
        rows.append((f"real train, n={result['baseline_n']} (baseline)", result["baseline_real_train_vs_heldout"]))
    table = [[label, f"{m['fd']:.3f}", f"{m['kid']:.5f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}",
              f"{m['density']:.3f}", f"{m['coverage']:.3f}"] for label, m in rows]
    output.table(f"{result['n']} images vs {result['reference']} (extractor: {result['extractor']})", cols, table,
                 set(cols[1:]))
    extra = []
    if "clip_score" in result:
        c = result["clip_score"]
        extra.append(f"{c['name']}: {c['clip_score']:.2f} ± {c['clip_score_std']:.2f} over {c['n']} images")
    if "confident_share" in result:
        line = f"confidently classified: {result['confident_share']:.1%}"
        if "class_accuracy" in result:
            line += f"; classified as the given class: {result['class_accuracy']:.1%}"
        extra.append(line)
    output.lines(extra)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics_cmd)
