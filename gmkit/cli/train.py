"""``gmkit train FAMILY --data ... --out runs/x``: train any family with the shared loop (``gmkit.train``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import DEVICE_HELP, TOKEN_HELP
from .output import Output

_T = {"steps": 10000, "batch_size": 64, "lr": 1e-3, "checkpoint_every": 1000}  # TrainConfig's defaults, for --help


def train_cmd(
    model: str = typer.Argument(..., help="Family to train: ddpm (ddim is the same network), ldm, autoencoder, vae, vqvae, augvae, gan, flow, score, sr, pix2pix, cyclegan."),
    data: Optional[str] = typer.Option(None, "--data", show_default="mnist (pix2pix: openmoji-lines)", help="mnist, digits, openmoji, mnist-captions (NAME:all / NAME:test pick a split), a folder of images (subfolders = classes; train/ test/ = splits; metadata.jsonl = captions), tar shards, or a Hugging Face dataset (org/name, or a save_to_disk folder). pix2pix: openmoji-lines, SOURCES:TARGETS folders matched by file name, or a folder whose metadata.jsonl has source/target columns; cyclegan: domain A."),
    data_b: Optional[str] = typer.Option(None, "--data-b", show_default="openmoji-colour with the default --data", help="cyclegan: domain B, anything --data takes."),
    split: Optional[str] = typer.Option(None, "--split", show_default="train", help="Data split to train on (DATA:SPLIT works too)."),
    image_column: Optional[str] = typer.Option(None, "--image-column", show_default="the first Image column", help="Hugging Face data: the image column."),
    label_column: Optional[str] = typer.Option(None, "--label-column", show_default="a ClassLabel column", help="Hugging Face data: the class label column."),
    caption_column: Optional[str] = typer.Option(None, "--caption-column", show_default="text, caption or prompt", help="Hugging Face data: the caption column."),
    stream: bool = typer.Option(False, "--stream", help="Decode on the fly instead of caching (Hugging Face datasets, tar shards too big to cache)."),
    random_flip: bool = typer.Option(False, "--random-flip", help="Mirror half the training images (and aligned image columns)."),
    random_crop: bool = typer.Option(False, "--random-crop", help="Random crops of --image-size from images cached 1/8 larger."),
    workers: Optional[int] = typer.Option(None, "--workers", show_default="one per CPU core (build); 0 on CPU, 4 on GPU (loader)", help="Worker processes that decode the data into its cache and load batches."),
    preset: Optional[str] = typer.Option(None, "--preset", show_default="from --image-size 32/64/128/256", help="Model size for ddpm/score: cifar10 (the DDPM paper's 35.7M UNet), 64, 128, 256, or 32-cpu ... 256-cpu."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", show_default="1", help="Micro-batches per step (gradient accumulation); --batch-size stays the effective batch."),
    log_with: Optional[str] = typer.Option(None, "--log-with", help="Also log to tensorboard, wandb or trackio (beside log.jsonl)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", "--output", show_default="the --resume folder, else runs/FAMILY", help="Run folder to write."),
    steps: Optional[int] = typer.Option(None, "--steps", show_default=f"{_T['steps']:,}", help="Total optimizer steps (a resumed run continues up to this number)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", show_default=f"{_T['batch_size']} (family defaults may differ)", help="Global batch size (split across DDP processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", show_default=f"{_T['lr']:g} (gan 2e-4, ldm 5e-4, ...)", help="Peak learning rate."),
    image_size: Optional[int] = typer.Option(None, "--image-size", show_default="the data's size", help="Resize/crop training images to this size."),
    seed: Optional[int] = typer.Option(None, "--seed", show_default="0", help="Seed for weights, data order and noise."),
    conditional: bool = typer.Option(False, "--conditional", help="Condition on the data's class labels."),
    sde: Optional[str] = typer.Option(None, "--sde", show_default="ve", help="score: the noise process, ve (NCSN) or vp."),
    scale: Optional[int] = typer.Option(None, "--scale", show_default="4", help="sr: upsampling factor per side, e.g. 2 or 4."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="--out holds a run already: replace it (else refused; --resume continues it)."),
    autoencoder: Optional[str] = typer.Option(None, "--autoencoder", show_default="train one into OUT/autoencoder first", help="ldm: the first-stage autoencoder; vqgpt: the first-stage vqvae (a model source: run folder, file or Hub repo org/name[@REVISION])."),
    revision: Optional[str] = typer.Option(None, "--revision", help="ldm, vqgpt: the branch, tag, commit or refs/pr/N of a Hub repo --autoencoder (also --autoencoder org/name@REVISION)."),
    token: Optional[str] = typer.Option(None, "--token", help="ldm, vqgpt: " + TOKEN_HELP.removeprefix("Hub repos: ") + " For a Hub repo --autoencoder; never written into the run."),
    ae_steps: Optional[int] = typer.Option(None, "--ae-steps", show_default="3000", help="ldm, vqgpt: steps of the first stage they train when --autoencoder is not given."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON file with the family config."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: key=value (family config, or train.key=value)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", show_default=f"{_T['checkpoint_every']}", help="Steps between checkpoints."),
    save_dtype: Optional[str] = typer.Option(None, "--save-dtype", show_default="fp32", help="dtype of model.safetensors: fp32, fp16, bf16."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the networks (minutes to compile; pays in long runs). bf16 on CPU: --set train.cpu_amp=true."),
    on_bad_image: str = typer.Option("skip", "--on-bad-image", help="skip (report and go on) or error."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a model; writes model.safetensors, train_state.safetensors, log.jsonl and samples/."""
    from ..loop import dist_info
    from ..training import command_line, train

    argv = sys.argv[1:]
    try:
        summary = train(model, data, out, steps=steps, batch_size=batch_size, lr=lr, image_size=image_size, seed=seed,
                        conditional=conditional, resume=resume, config=config, overrides=[*set_, *(["train.compile=true"] if compile_ else [])],
                        checkpoint_every=checkpoint_every, save_dtype=save_dtype, device=device,
                        on_bad_image=on_bad_image, quiet=quiet, command=command_line(argv), overwrite=overwrite,
                        split=split, columns={k: v for k, v in (("image", image_column), ("label", label_column),
                                                                ("caption", caption_column)) if v},
                        stream=stream, random_flip=random_flip, random_crop=random_crop, workers=workers,
                        preset=preset, grad_accum=grad_accum, log_with=log_with, revision=revision, token=token,
                        sde=sde, scale=scale, autoencoder=autoencoder, ae_steps=ae_steps, data_b=data_b)
    except KeyboardInterrupt:  # the loop saved a checkpoint and said so
        raise typer.Exit(130) from None
    if dist_info()[0] == 0:
        Output(json_out, quiet).result(summary)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
