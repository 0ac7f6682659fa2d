"""``gmkit train FAMILY --data ... --out runs/x``: train any family with the shared loop."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import DEVICE_HELP, emit_json, positive, resolve_device, say


def train_cmd(
    model: str = typer.Argument(..., help="Family to train: ddpm (ddim is the same network), ldm, autoencoder, vae, vqvae, augvae, gan, flow, ..."),
    data: Optional[str] = typer.Option(None, "--data", help="mnist, digits, openmoji, mnist-captions (NAME:all / NAME:test pick a split), or a folder of images (subfolders = classes; metadata.jsonl = captions). Default: mnist."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default: the --resume folder, else runs/<family>)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimizer steps (a resumed run continues up to this number)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size (split across DDP processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Resize/crop training images to this size."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for weights, data order and noise."),
    conditional: bool = typer.Option(False, "--conditional", help="Condition on the data's class labels."),
    sde: Optional[str] = typer.Option(None, "--sde", help="Score models: the noise process, ve (NCSN) or vp (same as --set sde=...)."),
    scale: Optional[int] = typer.Option(None, "--scale", help="sr: upsampling factor per side, e.g. 2 or 4 (same as --set scale=N)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder exactly where it stopped."),
    autoencoder: Optional[str] = typer.Option(None, "--autoencoder", help="ldm: the first-stage autoencoder (a model source). Default: train one into OUT/autoencoder first."),
    ae_steps: int = typer.Option(3000, "--ae-steps", help="ldm: steps for the autoencoder it trains when --autoencoder is not given."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON file with the family config."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: key=value (family config, or train.key=value)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints."),
    save_dtype: Optional[str] = typer.Option(None, "--save-dtype", help="dtype of model.safetensors: fp32, fp16, bf16."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    on_bad_image: str = typer.Option("skip", "--on-bad-image", help="skip (report and go on) or error."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a model; writes model.safetensors, train_state.safetensors, log.jsonl and samples/."""
    import torch

    from ..config import apply_overrides, from_dict, to_dict
    from ..data import load_data
    from ..errors import GmkitError
    from ..families import get_family
    from ..registry import BUNDLED
    from ..train import DTYPES, TrainConfig, config_shape, dist_info, fit_config_to_data, load_resume_config, read_train_state, train

    for name, v in (("--steps", steps), ("--batch-size", batch_size), ("--image-size", image_size),
                    ("--checkpoint-every", checkpoint_every)):
        positive(name, v)
    if lr is not None and not lr > 0:
        raise GmkitError(f"--lr must be positive, got {lr}")
    if on_bad_image not in ("skip", "error"):
        raise GmkitError("--on-bad-image must be skip or error")
    family = get_family(BUNDLED[model].family if model in BUNDLED else model)
    rank, local_rank, world = dist_info()
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)

    family_sets = [s for s in set_ if not s.startswith("train.")]
    if sde is not None:
        if sde not in ("ve", "vp"):
            raise GmkitError(f"--sde must be ve or vp, got {sde!r}")
        if not hasattr(family.Config(), "sde"):
            raise GmkitError(f"--sde applies to score models; {family.name} has no noise-process setting")
        family_sets.append(f"sde={sde}")
    if scale is not None:
        if not hasattr(family.Config(), "scale"):
            raise GmkitError(f"--scale applies to super-resolution models (sr); {family.name} has no scale")
        if scale < 2:
            raise GmkitError(f"--scale must be an integer >= 2 (2 or 4 are usual), got {scale}")
        family_sets.append(f"scale={scale}")
    train_sets = [s[len("train."):] for s in set_ if s.startswith("train.")]
    resume_state = None
    recipe_prev: dict = {}
    if resume is not None:
        resume_state = read_train_state(resume)
        cfg, tcfg = load_resume_config(resume_state, family)
        recipe_prev = json.loads(resume_state[1].get("gmkit.recipe", "{}"))
        if config is not None or family_sets or conditional:
            say("gmkit: --resume keeps the run's model config; --config/--set/--conditional are ignored", quiet)
        if image_size is not None and recipe_prev.get("image_size") not in (None, image_size):
            raise GmkitError(f"--image-size {image_size}: the run was trained at {recipe_prev['image_size']}")
        data = data or recipe_prev.get("data")
        image_size = recipe_prev.get("image_size") or image_size
        out = out or resume
    else:
        base = to_dict(family.Config())
        if config is not None:
            try:
                base = json.loads(config.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise GmkitError(f"--config {config}: cannot read JSON ({e})") from None
        cfg = from_dict(family.Config, apply_overrides(base, family_sets), "config")
        tcfg = from_dict(TrainConfig, {**to_dict(TrainConfig()), **family.train_defaults}, f"{family.name} train defaults")
    tdict = to_dict(tcfg)
    for key, val in (("steps", steps), ("batch_size", batch_size), ("lr", lr), ("seed", seed),
                     ("checkpoint_every", checkpoint_every), ("save_dtype", save_dtype)):
        if val is not None:
            tdict[key] = val
    tcfg = from_dict(TrainConfig, apply_overrides(tdict, train_sets), "train config")
    if tcfg.save_dtype not in DTYPES:
        raise GmkitError(f"--save-dtype {tcfg.save_dtype}: use fp32, fp16 or bf16")
    data = data or "mnist"
    out = out or Path("runs") / family.name

    ds = load_data(data, "train", image_size, None, on_bad_image)
    if resume_state is None:
        cfg = fit_config_to_data(cfg, ds, conditional)
    elif tuple(ds.images.shape[1:]) != config_shape(cfg):
        raise GmkitError(f"--resume: the data gives images of shape {tuple(ds.images.shape[1:])}, "
                         f"the run was trained on {config_shape(cfg)}")
    ae_state = None
    if family.name == "ldm" and resume_state is None:
        from ..train import first_stage

        positive("--ae-steps", ae_steps)
        cfg, ae_state, ae_source, ae_recipe = first_stage(cfg, ds, autoencoder, out / "autoencoder", ae_steps, tcfg.seed,
                                                          dev, data, quiet)
    elif autoencoder is not None:
        raise GmkitError("--autoencoder applies to ldm only")
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    net = family(cfg)
    if ae_state is not None:
        net.load_autoencoder(ae_state)
    argv = sys.argv[1:] if Path(sys.argv[0]).name != "__main__.py" else sys.argv[1:]
    recipe = {"command": "gmkit " + shlex.join(argv), "data": data, "data_note": ds.note, "image_size": image_size,
              "train_images": len(ds), "world_size": world, "device": str(dev), "torch": torch.__version__,
              "params": sum(p.numel() for p in net.parameters())}
    if ae_state is not None:
        recipe["autoencoder"] = ae_source
        recipe["autoencoder_recipe"] = ae_recipe  # how the first stage was trained: the file describes both
    if ds.note.startswith("OpenMoji"):
        from ..data.captioned import OPENMOJI_LICENSE

        recipe["data_license"] = OPENMOJI_LICENSE
    if recipe_prev.get("command") and resume_state is not None:
        recipe["earlier_commands"] = recipe_prev.get("earlier_commands", []) + [recipe_prev["command"]]
    if rank == 0:
        say(f"gmkit: training {family.name} ({recipe['params'] / 1e6:.2f}M parameters) on {data} "
            f"({len(ds)} images {tuple(ds.images.shape[1:])}) on {dev}, {world} process(es) -> {out}", quiet)
    try:
        summary = train(net, ds, out, tcfg, dev, recipe, resume_state, quiet)
    except KeyboardInterrupt:  # the loop saved a checkpoint and said so
        raise typer.Exit(130) from None
    if rank == 0:
        say(f"gmkit: done: step {summary['step']}, {summary['it_s']} it/s; model in {out / 'model.safetensors'}", quiet)
        if json_out:
            emit_json(summary)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
