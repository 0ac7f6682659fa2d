"""``gmkit sample MODEL -n N --seed S --out PATH``: images from any model source."""

from __future__ import annotations

import time
from typing import Optional

import typer

from ._common import DEVICE_HELP, DTYPE_HELP, emit_json, positive, resolve_device, resolve_dtype, say


def sample_cmd(
    model: str = typer.Argument(..., help="Bundled name (ddpm, ddim), checkpoint file, run folder or Hub repo id."),
    num_samples: Optional[int] = typer.Option(None, "-n", "--num-samples", help="Number of images (default 16; 1 with --image; with --init, its batch)."),
    seed: int = typer.Option(0, "--seed", help="Image i comes from seed S+i, whatever the batch size."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampler steps (default: ddpm 1000, ddim 50)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ddpm, ddim or dpm++2m (DPM-Solver++ 2M) (default: what the model name implies); score view: "
                                          "pc, langevin, euler-maruyama, euler, heun, euler-ancestral (docs/score.md)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Noise levels of the score-view samplers: karras (rho=7) or geometric."),
    snr: Optional[float] = typer.Option(None, "--snr", help="pc sampler: signal-to-noise ratio of the Langevin corrector (default 0.16)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM noise: 0 deterministic, 1 DDPM-like."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Text prompt (text-to-image models: ldm). - reads one prompt per line from stdin."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="What to steer away from (replaces the unconditional branch of guidance)."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Class to generate (class-conditional models)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale (with --class)."),
    truncation: Optional[float] = typer.Option(None, "--truncation", help="GAN truncation trick: redraw latent components with |z| > T (e.g. 0.7)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Flow sampling temperature: latents ~ N(0, T^2) (e.g. 0.7)."),
    init: Optional[str] = typer.Option(None, "--init", help="Starting noise: a .safetensors file (N, C, H, W) as encode writes it, or -."),
    image: Optional[str] = typer.Option(None, "--image", help="Edit this image (any Pillow format, - = stdin): img2img with --strength, inpainting with --mask; sr upsamples it."),
    mask: Optional[str] = typer.Option(None, "--mask", help="Inpainting mask for --image: white = generate, black = keep (RePaint)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="img2img: how far to noise --image, 0 (returns it) .. 1 (ignores it); default 0.6, 1 with --mask."),
    resample: Optional[int] = typer.Option(None, "--resample", help="Inpainting: RePaint resamplings per jump (default 5; more blends better, costs more)."),
    jump: Optional[int] = typer.Option(None, "--jump", help="Inpainting: RePaint jump length in steps (default 10)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images generated at once."),
    out: str = typer.Option("samples.png", "--out", "-o", help="x.png grid, folder/ one PNG each, x.safetensors raw, - PNG to stdout."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Read pickled Hub weights (.bin) with torch.load(weights_only=True) and convert them once to safetensors."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the denoiser (slow first batch, faster after; best on GPU)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Generate images."""
    import torch

    from ..errors import GmkitError
    from ..imageio import check_writable, save_images
    from ..registry import load
    from .progress import StepProgress

    positive("-n", num_samples)
    positive("--batch-size", batch_size)
    positive("--steps", steps)
    if eta is not None and not 0 <= eta <= 1:
        raise GmkitError(f"--eta must be between 0 and 1, got {eta}")
    if guidance is not None and guidance < 0:
        raise GmkitError(f"--guidance must be >= 0, got {guidance}")
    if truncation is not None and not truncation > 0:
        raise GmkitError(f"--truncation must be > 0, got {truncation}")
    if temperature is not None and not temperature >= 0:
        raise GmkitError(f"--temperature must be >= 0, got {temperature}")
    if seed < 0:
        raise GmkitError(f"--seed must be >= 0, got {seed}")
    if json_out and out == "-":
        raise GmkitError("--json and --out - both want stdout; write the images to a file")
    check_edit_options(image, mask, strength, resample, jump, prompt, init)
    check_writable(out)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    rank, world, dev = _distributed(out, dev)  # under torchrun: this process's share of the batches
    quiet = quiet or rank > 0
    net, src = load(model, dev, dt, allow_pickle=allow_pickle)
    if compile_:
        compile_denoisers(net)

    prompts = read_prompts(prompt, net, quiet) if prompt is not None else None
    if prompts is not None and len(prompts) > 1:
        # One image per prompt line; -n N gives N of each.
        prompts = [p for p in prompts for _ in range(num_samples or 1)]
        num_samples = len(prompts)
    elif prompts is not None and num_samples is None:
        num_samples = 1  # a single prompt: one image, as users of text-to-image tools expect
    init_x = read_init(init) if init is not None else None
    if init_x is not None:
        if num_samples is not None and num_samples != init_x.shape[0]:
            raise GmkitError(f"--init holds {init_x.shape[0]} images but -n asks for {num_samples}")
        num_samples = init_x.shape[0]
    n = num_samples or (1 if image is not None else 16)  # --image: one result unless -n asks for variations
    options = dict(src.defaults)
    given = {"sampler": sampler, "steps": steps, "eta": eta, "class_label": class_label, "guidance": guidance,
             "truncation": truncation, "temperature": temperature, "schedule": schedule, "snr": snr,
             "prompt": prompts[0] if prompts is not None and len(prompts) == 1 else prompts,
             "negative_prompt": negative_prompt}
    given.update({"strength": strength, "resample": resample, "jump": jump})
    net.check_options({**given, "init": init, "image": image, "mask": mask})
    image_x, mask_x = read_edit_inputs(image, mask, net, quiet) if image is not None else (None, None)
    options.update({k: v for k, v in given.items() if v is not None})
    if options.get("sampler") == "ddpm" and "eta" in options:
        raise GmkitError("--eta applies to the ddim sampler only (add --sampler ddim)")

    t0 = time.perf_counter()
    chunks = []
    with StepProgress("sample", quiet) as progress:
        starts = [st for k, st in enumerate(range(0, n, batch_size)) if k % world == rank]
        for start in starts:
            count = min(batch_size, n - start)
            gens = [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]
            opts = dict(options)
            if init_x is not None:
                opts["init"] = init_x[start:start + count]
            if image_x is not None:
                opts["image"], opts["mask"] = image_x, mask_x
            if prompts is not None and len(prompts) > 1:
                opts["prompt"] = prompts[start:start + count]
            chunks.append(net.sample(gens, callback=progress.callback(start // batch_size, -(-n // batch_size)), **opts).cpu())
    seconds = time.perf_counter() - t0
    meta = {"gmkit.model": model, "gmkit.seed": str(seed), "gmkit.options": str(options)}
    if world > 1:  # each rank writes its own batches, named by global index: the files of a one-process run
        files = [f for start, x in zip(starts, chunks) for f in save_images(x, out, meta, start_index=start)]
        files = _gather_count(len(files))
        if rank > 0:
            return
    else:
        files = save_images(torch.cat(chunks), out, meta)
    report = {"model": model, "family": net.name, "n": n, "seed": seed, **options,
              **{k: v for k, v in (("image", image), ("mask", mask)) if v is not None}, "device": str(dev),
              "dtype": str(dt).replace("torch.", ""), "seconds": round(seconds, 3),
              "images_per_s": round(n / seconds, 3), "out": out, "files": files if isinstance(files, int) else len(files)}
    if world > 1:
        report["world_size"] = world
    if json_out:
        emit_json(report)
    elif out != "-":
        say(f"gmkit: {n} image(s) in {seconds:.2f} s -> {out}", quiet)


def _distributed(out: str, dev):
    """(rank, world size, device) under torchrun; (0, 1, dev) otherwise. Batch k goes to rank k % world,
    so every image is computed in the same batch as in a one-process run."""
    import torch

    from ..errors import GmkitError
    from ..imageio import output_kind
    from ..train import dist_info, setup_distributed

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

    if "prompt" not in net.sample_options:
        raise GmkitError(f"{net.name} models do not take --prompt (text-to-image models do: ldm)")
    if prompt == "-":
        prompts = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
        if not prompts:
            raise GmkitError("--prompt -: stdin held no prompts (one per line)")
    else:
        prompts = [prompt]
    if any(not p.strip() for p in prompts):
        say("gmkit: empty prompt: sampling unconditionally", quiet)
    for message in net.prompt_warnings(prompts):
        say(f"gmkit: {message}", quiet)
    return prompts


def compile_denoisers(net) -> None:
    """``torch.compile`` the networks called at every step (UNets, decoders) in place: same weights and names."""
    for name, module in net.named_modules():
        if name.split(".")[-1] in ("unet", "decoder"):
            module.compile()


def check_edit_options(image, mask, strength, resample, jump, prompt, init) -> None:
    """Refuse edit options that cannot go together, before loading anything."""
    from ..errors import GmkitError

    if strength is not None and not 0 <= strength <= 1:
        raise GmkitError(f"--strength must be between 0 and 1 (0 returns the image, 1 ignores it), got {strength}")
    if image is None:
        for name, v in (("--mask", mask), ("--strength", strength), ("--resample", resample), ("--jump", jump)):
            if v is not None:
                raise GmkitError(f"{name} edits an image: add --image PATH")
    for name, v in (("--resample", resample), ("--jump", jump)):
        if v is not None and v < 1:
            raise GmkitError(f"{name} must be >= 1, got {v}")
    if (resample is not None or jump is not None) and mask is None:
        raise GmkitError("--resample and --jump apply to inpainting: add --mask PATH")
    readers = [name for name, v in (("--image", image), ("--mask", mask), ("--prompt", prompt), ("--init", init)) if v == "-"]
    if len(readers) > 1:
        raise GmkitError(f"{' and '.join(readers)} both read stdin; give all but one of them as files")


def read_edit_inputs(image: str, mask: str | None, net, quiet: bool):
    """--image (resized to what the model takes, said so) and --mask (resized to the image, thresholded)."""
    from ..imageio import load_input_image, load_mask

    channels = net.image_shape[0]
    x, original = load_input_image(image, channels, net.input_size, quiet)
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
