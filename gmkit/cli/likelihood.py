"""``gmkit likelihood MODEL --data mnist``: held-out bits/dim of any model that defines a likelihood.

Flows give the exact density, VAEs an upper bound (ELBO / IWAE), diffusion and score models the
probability-flow ODE density (Hutchinson trace); GANs and VQ-VAEs say n/a and why.
"""

from __future__ import annotations

import time
from typing import Optional

import typer

from ._common import DEVICE_HELP, emit_json, positive, resolve_device, say


def likelihood_cmd(
    model: str = typer.Argument(..., help="Model source (bundled name, file, run folder, Hub id)."),
    data: str = typer.Option("mnist", "--data", help="mnist, digits or a folder of images; its held-out split is used."),
    split: str = typer.Option("test", "--split", help="Which split of a bundled data set (test = held out)."),
    num_images: Optional[int] = typer.Option(None, "-n", "--num-images", help="Images to evaluate (default: 500; 100 for ODE models)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Diffusion/score models: Heun steps of the probability-flow ODE (default 32)."),
    batch_size: int = typer.Option(50, "--batch-size", help="Images per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the dequantization noise and trace probes."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Bits per dimension on held-out data (lower is better)."""
    import inspect

    from ..compare import NO_LIKELIHOOD
    from ..data import load_data
    from ..errors import GmkitError
    from ..families.base import LIKELIHOOD
    from ..registry import load

    positive("-n", num_images)
    positive("--steps", steps)
    positive("--batch-size", batch_size)
    if seed < 0:
        raise GmkitError(f"--seed must be >= 0, got {seed}")
    dev = resolve_device(device)
    net, _ = load(model, dev)
    report = {"model": model, "family": net.name}
    if LIKELIHOOD not in net.capabilities or not callable(getattr(net, "bits_per_dim", None)):
        reason = NO_LIKELIHOOD.get(net.name, f"{net.name} declares no likelihood")
        if json_out:
            emit_json({**report, "bpd": None, "n/a": reason})
        else:
            say(f"gmkit: likelihood n/a for {model}: {reason}", quiet)
            typer.echo(f"{model}: n/a ({reason})")
        return
    params = inspect.signature(net.bits_per_dim).parameters
    ode = "steps" in params
    if steps is not None and not ode:
        raise GmkitError(f"--steps applies to diffusion and score models; {net.name} computes its likelihood directly")
    c, h, _ = net.image_shape
    ds = load_data(data, split, h, c)
    if tuple(ds.images.shape[1:]) != tuple(net.image_shape):
        raise GmkitError(f"--data {data} gives images of shape {tuple(ds.images.shape[1:])}, the model needs {tuple(net.image_shape)}")
    n = min(num_images or (100 if ode else 500), len(ds))
    x = ds.images[:n]
    kwargs = {k: v for k, v in (("batch_size", batch_size), ("seed", seed), ("steps", steps)) if k in params and v is not None}
    if "labels" in params and getattr(net.config, "num_classes", 0):
        if ds.labels is None:
            raise GmkitError(f"{net.name} is class-conditional and --data {data} has no labels")
        kwargs["labels"] = ds.labels[:n]
    say(f"gmkit: {net.name} likelihood on {n} {split} images of {data}"
        + (f" (probability-flow ODE, {steps or getattr(net, 'likelihood_steps', '?')} Heun steps)" if ode else ""), quiet)
    t0 = time.perf_counter()
    r = net.bits_per_dim(x, **kwargs)
    report.update({"data": data, "split": split, **r, "seconds": round(time.perf_counter() - t0, 2)})
    report["bpd"] = r.get("bpd", r.get("iwae_bpd"))
    report["kind"] = ("upper bound (IWAE)" if "iwae_bpd" in r else
                      "ODE density, dequantization bound" if ode else "exact density, dequantization bound")
    if json_out:
        emit_json(report)
    else:
        typer.echo(f"{model}: {report['bpd']:.4f} bits/dim ({report['kind']}; {n} {split} images of {data}, "
                   f"{report['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command("likelihood")(likelihood_cmd)
