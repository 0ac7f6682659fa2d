"""``gmkit sample MODEL -n N --seed S --out PATH``: images from any model source (over ``gmkit.Model``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import DEVICE_HELP, REVISION_HELP, TOKEN_HELP, DTYPE_HELP, resolve_device, resolve_dtype
from .output import Output, refuse_terminal


def sample_cmd(
    model: str = typer.Argument(..., help="Bundled name (ddpm, ddim, ...), checkpoint file, run folder or Hub repo id."),
    num_images: Optional[int] = typer.Option(None, "-n", "--num-images", "--num-samples", show_default="16; 1 with --image or one --prompt; with --init, its batch", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Image i comes from seed S+i, whatever the batch size."),
    steps: Optional[int] = typer.Option(None, "--steps", "--num-inference-steps", show_default="the sampler's: ddpm all (1000), ddim/dpm++2m 50, heun 18, pc 500", help="Sampler steps (noise levels)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", show_default="what the model name implies", help="ddpm, ddim, dpm++2m (DPM-Solver++ 2M), euler, heun, "
                                          "euler-ancestral, euler-maruyama, pc or langevin: every diffusion model takes every sampler (README)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", show_default="the sampler's", help="Noise levels: discrete (the model's own timesteps), karras (rho=7), "
                                           "exponential (= geometric); any with any sampler (dpm++2m + karras = DPM++ 2M Karras)."),
    snr: Optional[float] = typer.Option(None, "--snr", show_default="0.16", help="pc sampler: signal-to-noise ratio of the Langevin corrector."),
    eta: Optional[float] = typer.Option(None, "--eta", show_default="0", help="ddim / euler-ancestral noise: 0 deterministic, 1 DDPM-like (euler-ancestral's default)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Text prompt (text-to-image models: ldm, vqgpt). - reads one prompt per line from stdin."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="What to steer away from (replaces the unconditional branch of guidance)."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Class to generate (class-conditional models)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", "--guidance-scale", show_default="the model's (ldm 4)", help="Classifier-free guidance scale (with --class or --prompt)."),
    truncation: Optional[float] = typer.Option(None, "--truncation", help="GAN truncation trick: redraw latent components with |z| > T (e.g. 0.7)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", show_default="1", help="Flow: latents ~ N(0, T^2) (e.g. 0.7); vqgpt: softmax temperature of the tokens (0 = greedy)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", show_default="0 (all)", help="vqgpt: draw each token from the K most likely only."),
    top_p: Optional[float] = typer.Option(None, "--top-p", show_default="1 (all)", help="vqgpt: nucleus sampling, the most likely tokens holding mass P."),
    init: Optional[str] = typer.Option(None, "--init", help="Starting noise: a .safetensors file (N, C, H, W) as encode writes it, or -."),
    image: Optional[str] = typer.Option(None, "--image", help="Edit this image (any Pillow format, - = stdin): img2img with --strength, inpainting with --mask; sr upsamples it; pix2pix and cyclegan translate it."),
    direction: Optional[str] = typer.Option(None, "--direction", show_default="a2b", help="cyclegan: which way to translate --image, a2b or b2a."),
    mask: Optional[str] = typer.Option(None, "--mask", help="Inpainting mask for --image: white = generate, black = keep (RePaint; a masked denoiser for euler, heun, dpm++2m; vqgpt: the tokens under white are redrawn)."),
    strength: Optional[float] = typer.Option(None, "--strength", show_default="0.6; 1 with --mask", help="img2img: how far to noise --image, 0 (returns it) .. 1 (ignores it)."),
    resample: Optional[int] = typer.Option(None, "--resample", show_default="5", help="Inpainting: RePaint resamplings per jump (more blends better, costs more)."),
    jump: Optional[int] = typer.Option(None, "--jump", show_default="10", help="Inpainting: RePaint jump length in steps."),
    height: Optional[int] = typer.Option(None, "--height", show_default="the model's size", help="Text-to-image: image height in pixels, a multiple of 8."),
    width: Optional[int] = typer.Option(None, "--width", show_default="the model's size", help="Text-to-image: image width in pixels, a multiple of 8."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", metavar="<str>", help="LoRA adapter FILE[:SCALE] (a .safetensors file or Hub id; repeatable), merged into the weights at load."),
    config: Optional[str] = typer.Option(None, "--config", show_default="inferred from the tensors", help="Single-file checkpoints: the diffusers pipeline (folder or Hub id) whose configs describe it."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images generated at once."),
    overwrite: bool = typer.Option(False, "--overwrite", help="--out folder/ already holds images: replace them (else refused, so two runs never mix)."),
    out: str = typer.Option("samples.png", "--out", "-o", "--output", help="x.png grid, folder/ one PNG each, x.safetensors raw, - PNG to stdout."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    revision: Optional[str] = typer.Option(None, "--revision", help=REVISION_HELP),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Read pickled Hub weights (.bin) with torch.load(weights_only=True) and convert them once to safetensors."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the sampling networks (slow first batch, faster after; best on GPU)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Generate images."""
    import torch

    from ..errors import GmkitError
    from ..imageio import check_held, output_kind, save_images
    from ..model import load, seeds_check
    from ..options import SampleOptions, check_run, fit_batch
    from ..outputs import check_output, clear_images
    from ..progress import Progress, note

    check_run(n=num_images, seed=seed, batch_size=batch_size)
    given = {"sampler": sampler, "steps": steps, "eta": eta, "class_label": class_label, "guidance": guidance,
             "truncation": truncation, "temperature": temperature, "top_k": top_k, "top_p": top_p, "schedule": schedule, "snr": snr,
             "negative_prompt": negative_prompt, "strength": strength, "resample": resample, "jump": jump,
             "height": height, "width": width, "direction": direction}
    # Ranges and combinations first, before anything is loaded (files stand in for their tensors).
    SampleOptions(**given, prompt=prompt, image=image, mask=mask, init=init).check()
    readers = [name for name, v in (("--image", image), ("--mask", mask), ("--prompt", prompt), ("--init", init)) if v == "-"]
    if len(readers) > 1:
        raise GmkitError(f"{' and '.join(readers)} both read stdin; give all but one of them as files")
    if json_out and out == "-":
        raise GmkitError("--json and --out - both want stdout; write the images to a file")
    kind = output_kind(out)
    check_output(out, folder=kind == "folder", inputs=(model, image, mask, init), overwrite=overwrite)
    if out == "-":
        refuse_terminal("--out -")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    rank, world, dev = _distributed(out, dev)  # under torchrun: this process's share of the batches
    quiet = quiet or rank > 0
    m = load(model, dev, dt, allow_pickle=allow_pickle, compile=compile_, revision=revision, token=token, lora=lora or (),
             config=config)
    net = m.net
    if prompt is not None:
        net.check_options({"prompt": prompt})
    prompts = read_prompts(prompt, net, quiet) if prompt is not None else None
    net.check_options({"image": image, "mask": mask, "init": init, "direction": direction})
    image_x, mask_x = read_edit_inputs(image, mask, net, quiet, m.resolved.meta, direction) if image is not None else (None, None)
    n, opts = m.prepare(num_images, **given, prompt=prompts, image=image_x, mask=mask_x,
                        init=read_init(init) if init is not None else None)
    seeds_check(seed, n)
    shape = net.image_shape
    check_held(out, n, shape)
    fitted = fit_batch(batch_size, shape)
    if fitted < batch_size:
        note(f"gmkit: batches of {fitted} image(s) instead of {batch_size}: {shape} images are large "
             "(the images are the same: image i comes from seed S+i)", quiet)
        batch_size = fitted

    t0 = time.perf_counter()
    plan = net.sampling_plan(opts.sampler, opts.steps)
    starts = [st for k, st in enumerate(range(0, n, batch_size)) if k % world == rank]
    shown = {k: v for k, v in opts.given().items() if not torch.is_tensor(v)}
    meta = {"gmkit.model": model, "gmkit.seed": str(seed), "gmkit.options": str(shown)}
    stream = kind == "folder"  # each batch written when done: an interrupted run keeps what it made
    if stream and overwrite and rank == 0:
        cleared = clear_images(Path(out))
        if cleared:
            note(f"gmkit: --overwrite: removed {cleared} image(s) of an earlier run from {out}", quiet)
    chunks, files = [], []
    try:
        with Progress("sample", plan.steps, quiet) as bar:
            for start in starts:
                bar.reset(plan.steps, f"batch {start // batch_size + 1}/{-(-n // batch_size)}" if n > batch_size else "")
                x = m.generate(opts, seed, start, min(batch_size, n - start), bar.callback())
                if stream:
                    files += save_images(x, out, meta, start_index=start)
                else:
                    chunks.append(x)
    except KeyboardInterrupt:
        if files:
            note(f"gmkit: interrupted; the {len(files)} image(s) already written to {out} are kept")
        raise
    seconds = time.perf_counter() - t0
    if world > 1:  # each rank wrote its own batches, named by global index: the files of a one-process run
        files = _gather_count(len(files))
        if rank > 0:
            return
    elif not stream:
        files = save_images(torch.cat(chunks), out, meta)
    report = {"model": model, "family": net.name, "n": n, "seed": seed, **shown,
              **{k: v for k, v in (("image", image), ("mask", mask), ("init", init)) if v is not None}, "device": str(dev),
              "dtype": str(dt).replace("torch.", ""), "seconds": round(seconds, 3),
              "images_per_s": round(n / seconds, 3), "out": out, "files": files if isinstance(files, int) else len(files)}
    if world > 1:
        report["world_size"] = world
    output = Output(json_out, quiet)
    if json_out:
        output.result(report)
    elif out != "-":
        output.message(f"gmkit: {n} image(s) in {seconds:.2f} s -> {out}")


def _distributed(out: str, dev):
    """(rank, world size, device) under torchrun; (0, 1, dev) otherwise. Batch k goes to rank k % world,
    so every image is computed in the same batch as in a one-process run."""
    import torch

    from ..errors import GmkitError
    from ..imageio import output_kind
    from ..loop import dist_info, setup_distributed

    rank, local_rank, world = dist_info()
    if world == 1:
        return 0, 1, dev
    if output_kind(out) != "folder":
        raise GmkitError(f"--out {out}: under torchrun every process writes its own images; give a folder/ "
                         "(files are named by global index, as a one-process run names them)")
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    setup_distributed(dev)
    return rank, world, dev


def _gather_count(count: int) -> int:
    """Total files written by all ranks; also the barrier that ends the run."""
    import torch
    import torch.distributed as dist

    total = torch.tensor([count], dtype=torch.long)
    if dist.get_backend() == "nccl":
        total = total.cuda()
    dist.all_reduce(total)
    dist.destroy_process_group()
    return int(total.item())


def read_prompts(prompt: str, net, quiet: bool) -> list[str]:
    """The prompt, or one per non-empty stdin line for ``-``; says what an empty or long prompt means."""
    import sys

    from ..errors import GmkitError
    from ..progress import note

    if prompt == "-":
        prompts = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
        if not prompts:
            raise GmkitError("--prompt -: stdin held no prompts (one per line)")
    else:
        prompts = [prompt]
    if any(not p.strip() for p in prompts):
        note("gmkit: empty prompt: sampling unconditionally", quiet)
    for message in net.prompt_warnings(prompts):
        note(f"gmkit: {message}", quiet)
    return prompts


def read_edit_inputs(image: str, mask: str | None, net, quiet: bool, meta: dict | None = None, direction: str | None = None):
    """--image (resized to what the model takes, said so; a note if it is far from the model's data) and
    --mask (resized to the image, thresholded)."""
    from ..imageio import data_stats, load_input_image, load_mask

    x, original = load_input_image(image, net.input_channels(direction), net.input_size, quiet, data_stats(meta))
    m = load_mask(mask, original, tuple(x.shape[-2:]), quiet) if mask is not None else None
    return x, m


def read_init(path: str):
    """Starting noise from a safetensors file (or stdin): its single tensor, or its ``noise`` entry."""
    from ..errors import GmkitError
    from ..latents import read_tensor_file

    tensors, _ = read_tensor_file(path, "--init")
    key = "noise" if "noise" in tensors else (next(iter(tensors)) if len(tensors) == 1 else None)
    if key is None:
        raise GmkitError(f"--init {path}: expected one tensor or a 'noise' entry, found {', '.join(tensors)}")
    x = tensors[key].float()
    if x.ndim != 4 or x.shape[0] == 0:
        raise GmkitError(f"--init {path}: expected shape (N, C, H, W), got {tuple(x.shape)}")
    if not bool(x.isfinite().all()):
        raise GmkitError(f"--init {path}: holds NaN or infinite values")
    return x


def register(app: typer.Typer) -> None:
    app.command("sample")(sample_cmd)
