"""One resolver for every command: a bundled name, a local file or folder, or a Hub repo id.

    ddpm, ddim                    bundled defaults (package data, work offline)
    path/to/model.safetensors     a gmkit checkpoint, or a single-file Stable Diffusion checkpoint
    runs/x                        a run folder (its model.safetensors)
    path/to/pipeline/             a diffusers pipeline folder (model_index.json)
    org/name[@revision][/sub]     a Hugging Face Hub repo (``@refs/pr/3`` too), through huggingface_hub's cache

``resolve`` finds the family, config and weights (read lazily); ``build`` makes the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from .checkpoint import PICKLE_SUFFIXES, LazyState, parameters_on_meta, read_metadata
from .config import from_dict
from .errors import GmkitError, OptionError
from .families import Family, get_family
from .guards import check_config
from .interop.diffusers import resolve_pipeline
from .interop.hub import HubId, RepoFiles, hub_repo, local_files, parse_hub_id
from .interop.lora import apply_lora
from .interop.pickles import converted
from .interop.single_file import resolve_single_file
from .names import use_bundled
from .resolved import Resolved

__all__ = ["BUNDLED_MODELS", "Bundled", "Resolved", "build", "bundled_path", "is_hub_source", "load", "resolve",
           "with_revision"]


@dataclass(frozen=True)
class Bundled:
    file: str
    family: str
    defaults: dict = field(default_factory=dict)  # sample options this name implies
    about: str = ""


BUNDLED_MODELS: dict[str, Bundled] = {
    "ddpm": Bundled("ddpm.safetensors", "ddpm", {"sampler": "ddpm"}, "DDPM on MNIST, ancestral sampler, 1000 steps"),
    "ddim": Bundled("ddpm.safetensors", "ddpm", {"sampler": "ddim", "steps": 50}, "the DDPM network with the DDIM sampler, 50 steps"),
    "vae": Bundled("vae.safetensors", "vae", {}, "convolutional Gaussian VAE on MNIST, 16-d latent, discretized-logistic decoder"),
    "vqvae": Bundled("vqvae.safetensors", "vqvae", {}, "VQ-VAE on MNIST, 7x7 codes from 128, EMA codebook, transformer prior"),
    "augvae": Bundled("augvae.safetensors", "augvae", {}, "class-conditional VAE on MNIST trained on augmented views (--class 0-9)"),
    "gan": Bundled("gan.safetensors", "gan", {}, "DCGAN on MNIST: hinge loss, spectral-norm discriminator, EMA generator (--truncation T); encode by inversion"),
    "pix2pix": Bundled("pix2pix.safetensors", "pix2pix", {},
                       "line art -> colour (pix2pix) on OpenMoji at 64 px, any size (--image sketch.png)"),
    "flow": Bundled("flow.safetensors", "flow", {}, "Glow-style multi-scale flow on MNIST: exact bits/dim and latents (--temperature T)"),
    "score": Bundled("score.safetensors", "score", {"sampler": "pc", "steps": 500},
                     "VE-SDE (NCSN) score model on MNIST: pc / langevin / reverse-SDE / ODE samplers, ODE latents and bits/dim"),
    "ldm": Bundled("ldm.safetensors", "ldm", {"sampler": "ddim", "steps": 50},
                   "text-to-image latent diffusion on OpenMoji (32 px): KL autoencoder, cross-attention UNet, MiniLM prompts (--prompt)"),
    "vqgpt": Bundled("vqgpt.safetensors", "vqgpt", {"guidance": 1.0, "temperature": 0.5},
                     "text-to-image the DALL-E way on OpenMoji (32 px): VQ-VAE codes, transformer prior with MiniLM cross-attention (--prompt)"),
    "sr": Bundled("sr.safetensors", "sr", {"sampler": "ddim", "steps": 20},
                  "4x super-resolution (SR3-style conditional diffusion) on OpenMoji, any input size (--image small.png)"),
    "sr-mnist": Bundled("sr-mnist.safetensors", "sr", {"sampler": "ddim", "steps": 20},
                        "4x super-resolution of grey handwritten digits (MNIST, 7 -> 28 px), any input size (--image small.png)"),
}

def bundled_path(name: str) -> Path:
    return Path(str(resources.files("gmkit") / "weights" / BUNDLED_MODELS[name].file))


def _known() -> str:
    return ", ".join(BUNDLED_MODELS)


def _looks_like_path(source: str) -> bool:
    """A missing local path (said so), rather than a Hub id (``org/name/file.safetensors`` is one)."""
    if source.startswith((".", "/", "~")):
        return True
    weights_file = Path(source).suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)
    return weights_file and (source.count("/") < 2 or Path(Path(source).parts[0]).is_dir())


def resolve(source: str, allow_pickle: bool = False, prefer_half: bool = False, revision: str | None = None,
            token: str | None = None, lora: Sequence[str] = (), config: str | None = None) -> Resolved:
    """A model source -> ``Resolved`` (family, config, lazily read weights, the defaults its name implies).

    ``allow_pickle``: read pickled weights (``.bin``, ``.ckpt``) with ``torch.load(weights_only=True)``.
    ``prefer_half``: read ``fp16`` weight variants where a pipeline has them. ``revision`` / ``token``:
    for Hub repos. ``lora``: ``FILE[:SCALE]`` adapters merged as the weights are read.
    ``config``: the architecture of a single-file checkpoint (a diffusers pipeline folder or repo).
    """
    r = _resolve(source, allow_pickle, prefer_half, revision, token, config)
    if lora:
        apply_lora(r, lora, token=token, allow_pickle=allow_pickle)
    return r


def is_hub_source(source: str) -> bool:
    """Whether ``source`` names a Hub repo: not a bundled name, not a local path, a well-formed Hub id."""
    if source in BUNDLED_MODELS or _looks_like_path(source):
        return False
    try:
        if Path(source).expanduser().exists():
            return False
        return parse_hub_id(source) is not None
    except (OSError, GmkitError):  # a malformed id or an impossible path: its load says why
        return False


def with_revision(sources: Sequence[str], revision: str | None) -> list[str]:
    """``sources`` with ``revision`` written inline into the one Hub repo among them (``org/name@REV``).

    A revision names one repo's branch, tag or commit: with several Hub repos, or none, it is refused
    (each repo then takes its own inline ``@REV``)."""
    sources = list(sources)
    if revision is None:
        return sources
    hubs = list(dict.fromkeys(s for s in sources if is_hub_source(s)))
    if len(hubs) != 1:
        listed = f"lists {len(hubs)} ({', '.join(hubs[:3])}{', ...' if len(hubs) > 3 else ''})" if hubs else "lists none"
        raise OptionError("revision", f"{{revision}} applies to exactly one Hub repo and {{models}} {listed}; "
                                      "give each Hub repo its revision inline instead: org/name@REVISION")
    hub = parse_hub_id(hubs[0], revision)  # an inline revision that differs is refused here
    return [hub.label if s == hubs[0] else s for s in sources]


def is_model_source(path: Path) -> bool:
    """A local path that holds a model: a weights file, or a folder with a gmkit or diffusers model."""
    if path.is_dir():
        return (path / "model.safetensors").is_file() or (path / "model_index.json").is_file()
    return path.is_file() and path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)


def _resolve(source, allow_pickle, prefer_half, revision, token, config) -> Resolved:
    path = Path(source).expanduser()
    try:
        path.exists()
    except OSError:  # a name too long (or otherwise impossible) for this file system: not a local path
        if parse_hub_id(source, revision) is None:
            raise GmkitError(f"{source[:60]}{'...' if len(source) > 60 else ''}: not a model name, file or Hub id") from None
    if revision is not None and (source in BUNDLED_MODELS or path.exists()):
        raise GmkitError(f"revision {revision!r} applies to Hub repos; {source} is "
                         f"{'a bundled model' if source in BUNDLED_MODELS and not path.exists() else 'a local path'}")
    # A bundled name shadowed by a local path of that name: the path only if it holds a model (said so).
    if use_bundled(source, source in BUNDLED_MODELS, is_model_source, "model"):
        bundled = bundled_path(source)
        if not bundled.exists():
            raise GmkitError(f"bundled model {source!r} is missing from the installation ({bundled}); reinstall gmkit")
        r = gmkit_checkpoint(bundled, source)
        r.defaults = dict(BUNDLED_MODELS[source].defaults)
        return r
    if path.is_file():
        return _from_file(path, source, allow_pickle, prefer_half, token, config)
    if path.is_dir():
        return _from_files(local_files(path, source), allow_pickle, prefer_half, token, config)
    if _looks_like_path(source):
        raise GmkitError(f"{source}: no such file or folder")
    hub = parse_hub_id(source, revision)
    if hub is None:
        raise GmkitError(f"unknown model {source!r}: not a bundled name ({_known()}), a file, a run folder or a Hub repo id")
    if hub.subfolder and Path(hub.subfolder).suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        # org/name[@rev]/path/to/file.safetensors: one file of the repo (a single-file checkpoint)
        folder, _, name = hub.subfolder.rpartition("/")
        files = hub_repo(HubId(hub.repo, hub.revision, folder or None), token)
        return _from_file(files.fetch([name]) / name, hub.label, allow_pickle, prefer_half, token, config)
    return _from_files(hub_repo(hub, token), allow_pickle, prefer_half, token, config)


def _from_files(files: RepoFiles, allow_pickle, prefer_half, token, config) -> Resolved:
    """A folder or Hub repo: a diffusers pipeline, a gmkit checkpoint, or one single-file checkpoint."""
    if "model_index.json" in files.names:
        return resolve_pipeline(files, allow_pickle=allow_pickle, prefer_half=prefer_half)
    if "model.safetensors" in files.names:
        return gmkit_checkpoint(files.fetch(["model.safetensors"]) / "model.safetensors", files.label)
    singles = sorted(n for n in files.names if "/" not in n and n.endswith(".safetensors"))
    if len(singles) == 1:
        return _from_file(files.fetch(singles) / singles[0], files.label, allow_pickle, prefer_half, token, config)
    found = sorted(files.names)[:8]
    raise GmkitError(f"{files.label}: no model.safetensors (gmkit), model_index.json (diffusers) nor a single "
                     f"checkpoint file{' (' + str(len(singles)) + ' .safetensors files: name one)' if singles else ''} "
                     f"(found: {', '.join(found) or 'nothing'})")


def _from_file(path: Path, label: str, allow_pickle, prefer_half, token, config) -> Resolved:
    """One file: a gmkit checkpoint, or a single-file Stable Diffusion checkpoint (original key layout)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise GmkitError(f"{label}: pickled weights are refused (loading them can run arbitrary code); "
                             "convert them to .safetensors, or pass --allow-pickle to read them with "
                             "torch.load(weights_only=True)")
        path = converted(path, True, label)
    meta = read_metadata(path)
    if meta.get("gmkit.family"):
        return gmkit_checkpoint(path, label)
    return resolve_single_file(path, label, config=config, allow_pickle=allow_pickle, prefer_half=prefer_half,
                               token=token)


def gmkit_checkpoint(path: Path, source: str) -> Resolved:
    """A gmkit checkpoint file: family and config from its metadata, weights read lazily."""
    meta = read_metadata(path)
    family_name = meta.get("gmkit.family")
    if not family_name:
        raise GmkitError(f"{path}: not a gmkit checkpoint (no gmkit.family in its metadata)")
    family = get_family(family_name)
    try:
        cfg_data = json.loads(meta.get("gmkit.config", "{}"))
    except json.JSONDecodeError:
        raise GmkitError(f"{path}: its config metadata is not valid JSON") from None
    config = check_config(family, from_dict(family.Config, cfg_data, f"{path} config"), f"{path} config")
    return Resolved(source, path, family, config, LazyState.from_file(path), meta, {})


def _shape(state, key: str) -> tuple[int, ...]:
    return state.shape(key) if isinstance(state, LazyState) else tuple(state[key].shape)


def _tensor(state, key: str, dtype, device, memory_format):
    if isinstance(state, LazyState):
        return state.load(key, dtype, device, memory_format)
    return state[key].to(device=device, dtype=dtype, memory_format=memory_format)


def build(resolved: Resolved, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Family:
    """Instantiate the family and load the weights, checking every name and shape.

    First the config's network is dry-built with its large tensors on the meta device, under caps
    from the file's own size, and every name and shape compared with the tensors present
    (``guards.check_weights``), so no checkpoint can make gmkit allocate more than its weights. The
    model is then built with its parameters on the meta device (no memory, no random init) and each
    weight read from disk straight into its final dtype, device and memory layout, so loading costs
    about the final weights in memory (``benchmarks/load_memory.py``). Weights holding NaN/inf are refused.
    """
    from .guards import BUILD_ERRORS, check_finite, check_weights

    check_weights(resolved.family, resolved.config, {k: _shape(resolved.state, k) for k in resolved.state},
                  resolved.path)
    try:
        with parameters_on_meta():
            model = resolved.family(resolved.config)
    except BUILD_ERRORS as e:
        raise GmkitError(f"{resolved.path}: its config cannot build a {resolved.family.name} model ({e})") from None
    expected = model.state_dict()
    # channels_last: ~15% faster convolutions on CPU (measured on the bundled UNet), same results.
    state = {k: _tensor(resolved.state, k, dtype if v.is_floating_point() else v.dtype, device,
                        torch.channels_last if v.ndim == 4 else torch.contiguous_format)
             for k, v in expected.items()}
    model.load_state_dict(state, assign=True)
    del state
    still_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_meta:
        raise GmkitError(f"{resolved.path}: {resolved.family.name} left {still_meta[0]} unset after loading "
                         "(a parameter outside its state dict)")
    check_finite(model, resolved.path)
    if resolved.text_encoder is not None:
        model.attach_text_encoder(resolved.text_encoder)
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype, memory_format=torch.channels_last)


def load(source: str, device="cpu", dtype=torch.float32, allow_pickle: bool = False, revision: str | None = None,
         token: str | None = None, lora: Sequence[str] = (), config: str | None = None) -> tuple[Family, Resolved]:
    r = resolve(source, allow_pickle=allow_pickle, prefer_half=dtype in (torch.float16, torch.bfloat16),
                revision=revision, token=token, lora=lora, config=config)
    return build(r, device, dtype), r
