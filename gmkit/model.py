"""The Python API: ``gmkit.load(source)`` -> a ``Model`` that samples, encodes, decodes and edits.

    import gmkit
    model = gmkit.load("ddim")                # any source the CLI takes; the name's defaults come along
    images = model.sample(16, seed=0)         # PIL images, exactly as `gmkit sample ddim -n 16 --out dir/` writes them
    x = model.sample_tensor(4, seed=3)        # (4, C, H, W) in [-1, 1]
    model = gmkit.load("ldm"); model.sample(4, prompt="a red apple")

Seeds behave as on the command line: image i comes from seed S+i, whatever the batch size. The CLI
is a thin layer over this class; options are checked once, by ``gmkit.options``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .errors import GmkitError, OptionError
from .families.base import DECODE, ENCODE, LIKELIHOOD, Family
from .options import EncodeOptions, SampleOptions, check_run


def load(source: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
         allow_pickle: bool = False, compile: bool = False, revision: str | None = None, token: str | None = None,
         lora=(), config: str | None = None) -> "Model":
    """A model from a bundled name (``ddpm``, ``ddim``, ...), a checkpoint file, a run folder, a
    diffusers folder or a Hugging Face Hub id (``org/name[@revision][/subfolder]``).

    ``device``: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps; ``dtype``: auto (fp32 on
    CPU, bf16 on GPU), fp32, fp16 or bf16. ``allow_pickle`` reads pickled diffusers weights with
    ``torch.load(weights_only=True)``; ``compile`` torch-compiles the sampling networks. Hub repos:
    ``revision`` (a branch, tag, commit or ``refs/pr/N``) and ``token``. ``lora``: adapters
    ``"FILE[:SCALE]"`` merged into the weights; ``config``: the pipeline describing a single-file checkpoint.
    """
    from .devices import resolve_device, resolve_dtype
    from .registry import load as load_family

    dev = resolve_device(device)
    net, resolved = load_family(source, dev, resolve_dtype(dtype, dev), allow_pickle=allow_pickle, revision=revision,
                                token=token, lora=[lora] if isinstance(lora, str) else list(lora or ()), config=config)
    model = Model(net, resolved, source)
    if compile:
        model.compile()
    return model


def seeds_check(seed: int, n: int = 1) -> int:
    """A first seed for ``n`` images (image i draws from seed + i, within torch's 64-bit seeds)."""
    check_run(seed=seed, n=n)
    return seed


class Model:
    """A loaded model: its family network (``.net``), where it came from, and its name's defaults."""

    def __init__(self, net: Family, resolved, source: str):
        self.net, self.resolved, self.source = net, resolved, source
        self.defaults: dict[str, Any] = dict(resolved.defaults)  # e.g. ddim: {"sampler": "ddim", "steps": 50}

    def __repr__(self) -> str:
        return f"gmkit.Model({self.source!r}, family={self.family!r}, defaults={self.defaults})"

    @property
    def family(self) -> str:
        return self.net.name

    @property
    def capabilities(self) -> frozenset[str]:
        return self.net.capabilities

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.net.image_shape)

    @property
    def device(self) -> torch.device:
        return self.net.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def compile(self) -> "Model":
        """``torch.compile`` the networks sampling calls, in place (slow first batch, faster after)."""
        from .runtime import compile_networks  # per-device settings: weight freezing on CPU, CUDA graphs on GPU

        compile_networks(self.net, self.device)
        return self

    # -- sampling -------------------------------------------------------------------------------
    def options(self, **options: Any) -> SampleOptions:
        """The checked options a sample call runs with: these over the model's defaults."""
        return SampleOptions.from_dict(options).over(self.defaults).check().check_for(self.net)

    def count(self, n: int | None, opts: SampleOptions) -> int:
        """How many images a call makes: ``n``; else one per prompt of a list, one for a single
        prompt or an edited image, the batch of an ``init`` tensor, or 16."""
        if n is not None:
            check_run(n=n)
        if opts.init is not None:
            if n is not None and n != opts.init.shape[0]:
                raise OptionError("init", f"holds {opts.init.shape[0]} images but {{n}} asks for {n}")
            return int(opts.init.shape[0])
        if isinstance(opts.prompt, (list, tuple)):
            return len(opts.prompt)
        if n is not None:
            return n
        return 1 if opts.prompt is not None or opts.image is not None else 16

    def prepare(self, n: int | None = None, **options: Any) -> tuple[int, SampleOptions]:
        """(image count, checked options), with files and Pillow images read into tensors."""
        options = {k: v for k, v in options.items() if v is not None}
        if isinstance(options.get("prompt"), (list, tuple)):
            prompts = list(options["prompt"])
            options["prompt"] = prompts[0] if len(prompts) == 1 else [p for p in prompts for _ in range(n or 1)]
            if len(prompts) > 1:
                n = None  # n images of each prompt
        if "image" in options and not torch.is_tensor(options["image"]):
            from .imageio import data_stats, load_input_image, load_mask

            channels = self.net.input_channels(options.get("direction"))
            x, original = load_input_image(options["image"], channels, self.net.input_size, quiet=True,
                                           stats=data_stats(self.resolved.meta))
            options["image"] = x
            if options.get("mask") is not None and not torch.is_tensor(options["mask"]):
                options["mask"] = load_mask(options["mask"], original, tuple(x.shape[-2:]), quiet=True)
        opts = self.options(**options)
        n = self.count(n, opts)
        check_run(n=n)
        return n, opts

    def generate(self, opts: SampleOptions, seed: int, start: int, count: int, callback=None) -> torch.Tensor:
        """Images ``start .. start + count - 1`` of a run with seed ``seed`` (image i from seed + i), on the CPU."""
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]
        kwargs = opts.as_kwargs()
        if opts.init is not None:
            kwargs["init"] = opts.init[start:start + count]
        if isinstance(opts.prompt, (list, tuple)):
            kwargs["prompt"] = list(opts.prompt[start:start + count])
        x = self.net.sample(gens, callback=callback, **kwargs).float().cpu()
        return self.finite(x, f"images {start}-{start + count - 1}")

    def finite(self, x: torch.Tensor, what: str) -> torch.Tensor:
        """``x``, refused if it holds NaN/inf: never an all-black image (or garbage latents) with exit code 0."""
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise GmkitError(f"{self.source}: the model produced NaN or infinite values ({what}); "
                             "its weights or these options make it diverge")
        return x

    def sample_tensor(self, n: int | None = None, seed: int = 0, *, batch_size: int = 64, progress: bool = False,
                      **options: Any) -> torch.Tensor:
        """``n`` images (N, C, H, W) in [-1, 1]; keyword options as ``gmkit sample`` takes them
        (``steps``, ``sampler``, ``guidance``, ``prompt``, ``class_label``, ``image``, ``strength`` ...)."""
        from .progress import Progress

        check_run(seed=seed, batch_size=batch_size)
        n, opts = self.prepare(n, **options)
        seeds_check(seed, n)
        plan = self.net.sampling_plan(opts.sampler, opts.steps)
        chunks = []
        with Progress("sample", plan.steps, quiet=not progress) as bar:
            for start in range(0, n, batch_size):
                bar.reset(plan.steps, f"batch {start // batch_size + 1}/{-(-n // batch_size)}")
                chunks.append(self.generate(opts, seed, start, min(batch_size, n - start), bar.callback()))
        return torch.cat(chunks)

    def sample(self, n: int | None = None, seed: int = 0, **options: Any) -> list:
        """``n`` PIL images, byte for byte what ``gmkit sample ... --out folder/`` writes (seed S -> image i from S+i)."""
        return to_images(self.sample_tensor(n, seed, **options))

    def edit(self, image, strength: float | None = None, mask=None, n: int = 1, seed: int = 0, **options: Any) -> list:
        """img2img (SDEdit) with ``strength`` 0 (the image) .. 1 (ignore it), or inpainting with ``mask``
        (white = generate); sr models upsample ``image``. ``image`` / ``mask``: a path, a Pillow image
        or a tensor in [-1, 1]."""
        return self.sample(n, seed, image=image, mask=mask, strength=strength, **options)

    # -- latents --------------------------------------------------------------------------------
    def encode(self, images, **options: Any) -> dict[str, torch.Tensor]:
        """Images (paths, Pillow images, or an (N, C, H, W) tensor in [-1, 1]) -> named latent tensors
        on the CPU (``latent_key`` names what decode reads). Options: ``steps``, ``class_label``,
        ``refine``, ``sampler`` (see ``gmkit encode --help``)."""
        if ENCODE not in self.capabilities:
            raise GmkitError(f"{self.family} models cannot encode images")
        opts = EncodeOptions(**options).check()
        x = images if torch.is_tensor(images) else self.read_images(images)
        latents = self.net.encode(x.to(self.device), **opts.as_kwargs())
        return {k: self.finite((v.float() if v.is_floating_point() else v).cpu().contiguous(), f"latents {k}")
                for k, v in latents.items()}

    def read_images(self, images) -> torch.Tensor:
        """Paths or Pillow images at this model's size, as (N, C, H, W) in [-1, 1]."""
        from PIL import Image

        from .imageio import load_image_file, pil_tensor

        items = images if isinstance(images, (list, tuple)) else [images]
        c, h, _ = self.image_shape
        return torch.cat([pil_tensor(im, c, h) if isinstance(im, Image.Image) else load_image_file(str(im), c, h)
                          for im in items])

    def decode_tensor(self, latents, class_label=None, batch_size: int = 256) -> torch.Tensor:
        """Latents (a tensor, or ``encode``'s dict) -> images (N, C, H, W) in [-1, 1] on the CPU."""
        if DECODE not in self.capabilities:
            raise GmkitError(f"{self.family} models have no decoder")
        if isinstance(latents, dict):
            key = self.net.latent_key
            if key not in latents:
                raise GmkitError(f"no {key!r} tensor for a {self.family} decoder (found: {', '.join(latents) or 'nothing'})")
            class_label = latents.get("label") if class_label is None else class_label
            latents = latents[key]
        if latents.ndim == 0 or latents.shape[0] == 0:
            raise GmkitError(f"the latents are empty (shape {tuple(latents.shape)})")
        if torch.is_tensor(class_label) and class_label.ndim and class_label.shape[0] != latents.shape[0]:
            raise OptionError("class_label", f"{class_label.shape[0]} labels for {latents.shape[0]} latents")
        chunks = []
        for s in range(0, latents.shape[0], batch_size):
            label = class_label[s:s + batch_size] if torch.is_tensor(class_label) and class_label.ndim else class_label
            x = self.net.decode(latents[s:s + batch_size], **({"class_label": label} if label is not None else {}))
            chunks.append(self.finite(x.float().cpu(), f"decoded images {s}-{s + len(x) - 1}"))
        return torch.cat(chunks)

    def decode(self, latents, class_label=None, batch_size: int = 256) -> list:
        """Latents -> PIL images (as ``gmkit decode ... --out folder/`` writes them)."""
        return to_images(self.decode_tensor(latents, class_label, batch_size))

    # -- likelihood -----------------------------------------------------------------------------
    def likelihood(self, images: torch.Tensor, labels: torch.Tensor | None = None, steps: int | None = None,
                   batch_size: int = 50, seed: int = 0) -> dict:
        """Bits per dimension of images (N, C, H, W) in [-1, 1]: ``bpd`` (the value), ``kind``
        (exact density, ODE density or an upper bound) and the family's own numbers."""
        net = self.net
        if LIKELIHOOD not in self.capabilities:
            raise GmkitError(f"likelihood n/a for {self.family}: {net.no_likelihood or 'it declares no likelihood'}")
        if steps is not None and net.likelihood_steps is None:
            raise OptionError("steps", f"applies to diffusion and score models; {self.family} computes its likelihood directly")
        if net.num_classes and labels is None:
            raise OptionError("labels", f"this {self.family} model is class-conditional: its likelihood needs the labels")
        seeds_check(seed)
        t0 = time.perf_counter()
        r = net.bits_per_dim(images, labels=labels if net.num_classes else None, steps=steps, batch_size=batch_size,
                             seed=seed)
        out = {**r, "bpd": r.get("bpd", r.get("iwae_bpd")), "seconds": round(time.perf_counter() - t0, 2)}
        out["kind"] = ("upper bound (IWAE)" if "iwae_bpd" in r else "ODE density, dequantization bound"
                       if net.likelihood_steps else "exact density, dequantization bound")
        return out


def to_images(x: torch.Tensor) -> list:
    """(N, C, H, W) in [-1, 1] -> Pillow images, as gmkit writes them to PNG files."""
    from .imageio import to_pil, to_uint8

    return [to_pil(a) for a in to_uint8(x)]
