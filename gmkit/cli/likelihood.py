"""``gmkit likelihood MODEL --data mnist``: held-out bits/dim of any model that defines a likelihood.

Flows give the exact density, VAEs an upper bound (ELBO / IWAE), diffusion and score models the
probability-flow ODE density (Hutchinson trace); GANs and VQ-VAEs say n/a and why.
"""

from __future__ import annotations

from typing import Optional

import typer

from ._common import DEVICE_HELP, REVISION_HELP, TOKEN_HELP, positive, resolve_device
from .output import Output


def likelihood_cmd(
    model: str = typer.Argument(..., help="Model source (bundled name, file, run folder, Hub id)."),
    data: str = typer.Option("mnist", "--data", help="mnist, digits or a folder of images; its held-out split is used."),
    split: str = typer.Option("test", "--split", help="Which split of a bundled data set (test = held out)."),
    num_images: Optional[int] = typer.Option(None, "-n", "--num-images", show_default="500; 100 for ODE models", help="Images to evaluate."),
    steps: Optional[int] = typer.Option(None, "--steps", show_default="32", help="Diffusion/score models: Heun steps of the probability-flow ODE."),
    batch_size: int = typer.Option(50, "--batch-size", help="Images per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the dequantization noise and trace probes."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    revision: Optional[str] = typer.Option(None, "--revision", help=REVISION_HELP),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Bits per dimension on held-out data (lower is better)."""
    from ..data import load_data
    from ..errors import GmkitError
    from ..families.base import LIKELIHOOD
    from ..model import load

    positive("-n", num_images)
    positive("--steps", steps)
    positive("--batch-size", batch_size)
    if seed < 0:
        raise GmkitError(f"--seed must be >= 0, got {seed}")
    m = load(model, resolve_device(device), revision=revision, token=token)
    net = m.net
    output = Output(json_out, quiet)
    report = {"model": model, "family": net.name}
    if LIKELIHOOD not in net.capabilities:
        reason = net.no_likelihood or f"{net.name} declares no likelihood"
        output.result({**report, "bpd": None, "n/a": reason}, f"{model}: n/a ({reason})")
        return
    ode = net.likelihood_steps is not None
    if steps is not None and not ode:
        raise GmkitError(f"--steps applies to diffusion and score models; {net.name} computes its likelihood directly")
    c, h, _ = net.image_shape
    ds = load_data(data, split, h, c)
    if tuple(ds.image_shape) != tuple(net.image_shape):
        raise GmkitError(f"--data {data} gives images of shape {tuple(ds.image_shape)}, the model needs {tuple(net.image_shape)}")
    n = min(num_images or (100 if ode else 500), len(ds))
    labels = None
    if net.num_classes:
        if ds.labels is None:
            raise GmkitError(f"{net.name} is class-conditional and --data {data} has no labels")
        labels = ds.labels[:n]
    output.message(f"gmkit: {net.name} likelihood on {n} {split} images of {data}"
                   + (f" (probability-flow ODE, {steps or net.likelihood_steps} Heun steps)" if ode else ""))
    r = m.likelihood(ds.images(n), labels, steps, batch_size, seed)
    report.update({"data": data, "split": split, **r})
    output.result(report, f"{model}: {report['bpd']:.4f} bits/dim ({report['kind']}; {n} {split} images of {data}, "
                          f"{report['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command("likelihood")(likelihood_cmd)
