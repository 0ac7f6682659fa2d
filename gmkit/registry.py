"""One resolver for every command: a bundled name, a local file or run folder, or a Hub repo id.

    ddpm, ddim                    bundled defaults (package data, work offline)
    path/to/model.safetensors     a checkpoint file
    runs/x                        a run folder (its model.safetensors)
    org/name[@revision][/sub]     a Hugging Face Hub repo, through huggingface_hub's cache
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .checkpoint import PICKLE_SUFFIXES, load_tensors
from .config import from_dict
from .errors import GmkitError
from .families import Family, get_family


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
    "gan": Bundled("gan.safetensors", "gan", {}, "DCGAN on MNIST: hinge loss, spectral-norm discriminator, EMA generator (--truncation T)"),
    "flow": Bundled("flow.safetensors", "flow", {}, "Glow-style multi-scale flow on MNIST: exact bits/dim and latents (--temperature T)"),
    "score": Bundled("score.safetensors", "score", {"sampler": "pc", "steps": 500},
                     "VE-SDE (NCSN) score model on MNIST: pc / langevin / reverse-SDE / ODE samplers, ODE latents and bits/dim"),
    "ldm": Bundled("ldm.safetensors", "ldm", {"sampler": "ddim", "steps": 50},
                   "text-to-image latent diffusion on OpenMoji (32 px): KL autoencoder, cross-attention UNet, MiniLM prompts (--prompt)"),
    "sr": Bundled("sr.safetensors", "sr", {"sampler": "ddim", "steps": 20},
                  "4x super-resolution (SR3-style conditional diffusion) on OpenMoji, any input size (--image small.png)"),
}

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^/]+))?(?:/(?P<sub>.+))?$")


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("gmkit") / "weights" / BUNDLED_MODELS[name].file))


@dataclass
class Resolved:
    source: str
    path: Path
    family: type[Family]
    config: object
    state: dict[str, torch.Tensor]
    meta: dict[str, str]
    defaults: dict


def _known() -> str:
    return ", ".join(BUNDLED_MODELS)


def _hub_file(repo: str, revision: str | None, subfolder: str | None) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # pragma: no cover - a core dependency
        raise GmkitError("loading from the Hub needs huggingface-hub (pip install huggingface-hub)") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    # Read the cache location now, not at huggingface_hub's import, so the environment of this call counts.
    cache_dir = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    try:
        return Path(hf_hub_download(repo, "model.safetensors", subfolder=subfolder, revision=revision,
                                    cache_dir=cache_dir, local_files_only=offline))
    except LocalEntryNotFoundError:
        if offline:
            raise GmkitError(f"{repo}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             "download it once with network access") from None
        raise GmkitError(f"{repo}: cannot reach the Hugging Face Hub and the model is not cached") from None
    except RepositoryNotFoundError:
        raise GmkitError(f"{repo}: no such Hub repository (or it is private: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise GmkitError(f"{repo}: no revision {revision!r}") from None
    except EntryNotFoundError:
        raise GmkitError(f"{repo}: has no gmkit model.safetensors nor a diffusers model_index.json"
                         f"{' in ' + subfolder if subfolder else ''}") from None
    except OSError as e:
        raise GmkitError(f"{repo}: download failed ({e})") from None


def locate(source: str) -> tuple[Path, dict]:
    """Where a source's checkpoint file is, and the sample defaults its name implies."""
    if source in BUNDLED_MODELS and not Path(source).exists():
        path = bundled_path(source)
        if not path.exists():
            raise GmkitError(f"bundled model {source!r} is missing from the installation ({path}); reinstall gmkit")
        return path, dict(BUNDLED_MODELS[source].defaults)
    path = Path(source)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise GmkitError(f"{source}: pickled weights are refused (loading them can run arbitrary code); "
                         "convert them to .safetensors")
    if path.is_dir():
        for name in ("model.safetensors",):
            if (path / name).is_file():
                return path / name, {}
        found = sorted(p.name for p in path.iterdir())[:8]
        raise GmkitError(f"{source}: folder has no model.safetensors (gmkit) nor model_index.json (diffusers) "
                         f"(found: {', '.join(found) or 'nothing'})")
    if path.is_file():
        return path, {}
    if path.suffix == ".safetensors" or source.startswith((".", "/", "~")):
        raise GmkitError(f"{source}: no such file")
    m = HUB_ID.match(source)
    if m:
        return _hub_file(m["repo"], m["rev"], m["sub"]), {}
    raise GmkitError(f"unknown model {source!r}: not a bundled name ({_known()}), a file, a run folder or a Hub repo id")


def diffusers_files(source: str):
    """A diffusers pipeline (a folder or Hub repo with model_index.json) as ``interop.hub.RepoFiles``; else None."""
    from .interop.hub import hub_pipeline_files, local_files

    path = Path(source)
    if source in BUNDLED_MODELS and not path.exists():
        return None
    if path.is_dir():
        return local_files(path, source) if (path / "model_index.json").is_file() else None
    if path.exists() or path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) or source.startswith((".", "/", "~")):
        return None
    m = HUB_ID.match(source)
    return hub_pipeline_files(m["repo"], m["rev"], m["sub"]) if m else None


def resolve(source: str, allow_pickle: bool = False, prefer_half: bool = False) -> Resolved:
    """``allow_pickle`` and ``prefer_half`` (read fp16 weight variants) apply to diffusers pipelines."""
    pipeline = diffusers_files(source)
    if pipeline is not None:
        from .interop.diffusers import resolve_pipeline

        return resolve_pipeline(pipeline, allow_pickle=allow_pickle, prefer_half=prefer_half)
    path, defaults = locate(source)
    state, meta = load_tensors(path)
    family_name = meta.get("gmkit.family")
    if not family_name:
        raise GmkitError(f"{path}: not a gmkit checkpoint (no gmkit.family in its metadata)")
    family = get_family(family_name)
    try:
        cfg_data = json.loads(meta.get("gmkit.config", "{}"))
    except json.JSONDecodeError:
        raise GmkitError(f"{path}: its config metadata is not valid JSON") from None
    config = from_dict(family.Config, cfg_data, f"{path} config")
    return Resolved(source, path, family, config, state, meta, defaults)


def build(resolved: Resolved, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Family:
    """Instantiate the family and load the weights, checking every name and shape."""
    try:
        model = resolved.family(resolved.config)
    except (TypeError, ValueError) as e:
        raise GmkitError(f"{resolved.path}: its config cannot build a {resolved.family.name} model ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(resolved.state))
    unexpected = sorted(set(resolved.state) - set(expected))
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise GmkitError(f"{resolved.path}: weights do not match the config ({detail.strip()})")
    for k, v in expected.items():
        if tuple(v.shape) != tuple(resolved.state[k].shape):
            raise GmkitError(f"{resolved.path}: tensor {k} has shape {tuple(resolved.state[k].shape)}, "
                             f"the config needs {tuple(v.shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in resolved.state.items()})
    model.eval().requires_grad_(False)
    # channels_last: ~15% faster convolutions on CPU (measured on the bundled UNet), same results.
    return model.to(device=device, dtype=dtype, memory_format=torch.channels_last)


def load(source: str, device="cpu", dtype=torch.float32, allow_pickle: bool = False) -> tuple[Family, Resolved]:
    r = resolve(source, allow_pickle=allow_pickle, prefer_half=dtype in (torch.float16, torch.bfloat16))
    return build(r, device, dtype), r
