"""``gmkit metrics SAMPLES --reference mnist``: sample quality over gmkit's own feature extractor."""

from __future__ import annotations

from typing import Optional

import typer

from .output import Output


def metrics_cmd(
    samples: str = typer.Argument(..., help="A folder of images or a .safetensors images tensor (as `sample --out x.safetensors` writes)."),
    reference: str = typer.Option("mnist", "--reference", help="Reference data set with a gmkit feature extractor: mnist."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Also report the share classified as this class."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Frechet distance, KID and precision/recall against held-out data, beside the real-vs-real baseline."""
    from ..imageio import load_image_set
    from ..metrics.evaluate import evaluate

    output = Output(json_out, quiet)
    x, notes = load_image_set(samples)
    for n in notes:
        output.message(f"gmkit: {n}")
    result = evaluate(x, reference, class_label)
    result["samples"] = samples
    result["notes"] = notes
    output.result(result)
    cols = ["", result["names"]["fd"], result["names"]["kid"], "precision", "recall"]
    rows = [[label, f"{m['fd']:.3f}", f"{m['kid']:.5f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}"]
            for label, m in (("samples", result["metrics"]), ("real train (baseline)", result["baseline_real_train_vs_heldout"]))]
    output.table(f"{result['n']} images vs {result['reference']} (extractor gmkit-{reference})", cols, rows, set(cols[1:]))
    extra = f"confidently classified: {result['confident_share']:.1%}"
    if "class_accuracy" in result:
        extra += f"; classified as {class_label}: {result['class_accuracy']:.1%}"
    output.lines([extra])


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics_cmd)
