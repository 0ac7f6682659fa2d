"""diffusers-format pipelines (``model_index.json`` + components) as gmkit models.

A pipeline folder or Hub repo is read without diffusers: each component's ``config.json`` is
translated into a gmkit config (``diffusers_configs``), its weights are renamed onto gmkit's own
modules and read lazily (``weights``), and the scheduler config becomes the diffusion settings.

    DDPMPipeline, DDIMPipeline    UNet2DModel                    -> family ddpm
    LDMPipeline                   VQModel + UNet2DModel          -> family vqldm
    StableDiffusionPipeline       AutoencoderKL + UNet2DConditionModel + CLIP text encoder
                                                                 -> family ldm

A component lives in its own folder (``unet/config.json``) or, in flat repos such as
``google/ddpm-cifar10-32``, at the repo root (``config.json``, ``scheduler_config.json``), as
diffusers falls back to the root when a component folder is missing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from ..checkpoint import LazyState
from ..errors import GmkitError
from ..families.autoencoder import AutoencoderConfig
from ..families.ddpm import DDPM, DDPMConfig
from ..families.ldm import LDM, LDMConfig
from ..families.vqldm import VQLatentDiffusion, VQLatentDiffusionConfig
from ..resolved import Resolved
from .clip import CLIPText, clip_key
from .diffusers_configs import (PIPELINES, _check, autoencoder_kl_config, class_name, read_json, scheduler_settings,
                                unet2d_condition_config, unet2d_config, vqmodel_config)
from .hub import RepoFiles
from .weights import Weights, choose_weights, read_weights, shard_files

# -- key renaming ---------------------------------------------------------------------------------

# Attention weights of checkpoints saved before diffusers 0.14 carry the old names.
_OLD_ATTENTION = ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0."))


def rename_key(key: str) -> str:
    """A diffusers parameter name -> gmkit's (the modules share the reference names; only the
    pre-0.14 attention names differ)."""
    for old, new in _OLD_ATTENTION:
        key = key.replace(old, new)
    return key


def renamed(state, prefix: str, rename: Callable[[str], str] | None = None):
    """``state`` (a LazyState or a dict) with gmkit's names under ``prefix``."""
    rename = rename or rename_key  # looked up at call time, so a test can swap in a wrong mapping
    if isinstance(state, LazyState):
        return state.renamed(lambda k: prefix + rename(k))
    return {prefix + rename(k): v for k, v in state.items()}


# -- layout ---------------------------------------------------------------------------------------

def components(index: dict) -> dict[str, str]:
    """{component: class name} of a model_index.json (components set to null are left out)."""
    out = {}
    for k, v in index.items():
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1] is not None:
            out[k] = class_name(str(v[1]))
    return out


class Layout:
    """Where each component of a pipeline lives: its folder ("" = the repo root) and weights."""

    def __init__(self, files: RepoFiles, pipeline: str, prefer_half: bool):
        self.files, self.label = files, files.label
        self.folders: dict[str, str] = {}
        self.weights: dict[str, Weights] = {}
        need = ["model_index.json"]
        for comp in PIPELINES[pipeline]:
            folder = comp if any(n.startswith(comp + "/") for n in files.names) else ""
            self.folders[comp] = folder
            if comp == "tokenizer":
                if not folder:
                    raise GmkitError(f"{self.label}: missing folder tokenizer/")
                need += sorted(n for n in files.names if n.startswith("tokenizer/"))
            elif comp == "scheduler":
                need.append(self.path(comp, "scheduler_config.json"))
            else:
                need.append(self.path(comp, "config.json"))
                w = choose_weights(files.names, folder, prefer_half, self.label, comp)
                self.weights[comp] = w
                need += [w.index] if w.index else list(w.files)
        flat = [c for c in self.weights if not self.folders[c]]
        if len(flat) > 1:  # one root config.json cannot describe two models
            raise GmkitError(f"{self.label}: missing folder {flat[1]}/ (only one component can live at the repo root)")
        missing = [p for p in need if p not in files.names]
        if missing:
            raise GmkitError(f"{self.label}: missing file {missing[0]}")
        self.root = files.fetch(need)
        shards = []
        for comp, w in self.weights.items():
            self.weights[comp] = shard_files(self.root, w, self.label)
            shards += list(self.weights[comp].files) if w.index else []
        if shards:
            self.root = files.fetch(shards)

    def path(self, comp: str, name: str) -> str:
        folder = self.folders[comp]
        return f"{folder}/{name}" if folder else name

    def config(self, comp: str, name: str = "config.json") -> dict:
        rel = self.path(comp, name)
        return read_json(self.root / rel, self.label, rel)

    def state(self, comp: str, allow_pickle: bool, prefix: str) -> LazyState:
        return renamed(read_weights(self.root, self.weights[comp], allow_pickle, self.label), prefix)

    def used(self) -> dict[str, str]:
        """{component: folder} and the weights read, for export and reports."""
        return {**{f"{c}.folder": f for c, f in self.folders.items()},
                **{f"{c}.weights": ",".join(w.files) for c, w in self.weights.items()}}


# -- the pipelines --------------------------------------------------------------------------------

def resolve_pipeline(files: RepoFiles, allow_pickle: bool = False, prefer_half: bool = False) -> Resolved:
    """A diffusers pipeline -> ``Resolved`` (family, config, renamed lazy weights, defaults)."""
    label = files.label
    root = files.fetch(["model_index.json"])
    index = read_json(root / "model_index.json", label, "model_index.json")
    pipeline = class_name(str(index.get("_class_name", "")))
    comps = components(index)
    if pipeline not in PIPELINES:
        found = ", ".join(f"{k} ({v})" for k, v in comps.items()) or "no components"
        raise GmkitError(f"{label}: {pipeline or 'an unnamed pipeline'} is not supported (gmkit runs "
                         f"{', '.join(PIPELINES)}); found {found}")
    for comp, accepted in PIPELINES[pipeline].items():
        if comp not in comps:
            raise GmkitError(f"{label}: {pipeline} without a {comp} component in model_index.json")
        _check(comps[comp] in accepted, label, f"{comp} of class {comps[comp]}")
    lay = Layout(files, pipeline, prefer_half)
    sched_cls = comps["scheduler"]
    settings, defaults = scheduler_settings(sched_cls, lay.config("scheduler", "scheduler_config.json"), label)
    meta = {"gmkit.source": "diffusers", "diffusers.pipeline": pipeline, "diffusers.scheduler": sched_cls}
    files_used = {"pipeline": pipeline, **lay.used()}
    if pipeline == "StableDiffusionPipeline":
        return _stable_diffusion(lay, settings, defaults, meta, allow_pickle, files_used)
    unet_cfg = unet2d_config(lay.config("unet"), label)
    _check_variance(unet_cfg, settings["variance_type"], label)
    state = lay.state("unet", allow_pickle, "unet.")
    if pipeline in ("DDPMPipeline", "DDIMPipeline"):
        config = DDPMConfig(unet=unet_cfg, **settings)
        return Resolved(label, Path(lay.root), DDPM, config, state, {**meta, "gmkit.family": DDPM.name},
                        defaults, files=files_used)
    if pipeline == "LDMPipeline":
        vq_cfg, scale = vqmodel_config(lay.config("vqvae"), label)
        if vq_cfg.latent_channels != unet_cfg.in_channels:
            raise GmkitError(f"{label}: the unet takes {unet_cfg.in_channels} channels but the vqvae's latent has "
                             f"{vq_cfg.latent_channels}")
        state.update(lay.state("vqvae", allow_pickle, "vqvae."))
        config = VQLatentDiffusionConfig(unet=unet_cfg, vq=vq_cfg, scaling_factor=scale, **settings)
        return Resolved(label, Path(lay.root), VQLatentDiffusion, config, state,
                        {**meta, "gmkit.family": VQLatentDiffusion.name}, defaults, files=files_used)
    raise AssertionError(pipeline)  # pragma: no cover - PIPELINES and this function list the same names


def _check_variance(unet_cfg, variance: str, label: str) -> None:
    """A UNet predicting its variance (twice the channels out) goes with variance_type learned_range only."""
    learned = unet_cfg.out_channels == 2 * unet_cfg.in_channels
    if variance == "learned_range" and not learned:
        raise GmkitError(f"{label}: the scheduler's variance_type learned_range needs a unet with twice the "
                         f"channels out ({2 * unet_cfg.in_channels}), it has {unet_cfg.out_channels}")
    if variance != "learned_range" and unet_cfg.out_channels != unet_cfg.in_channels:
        raise GmkitError(f"{label}: the unet has {unet_cfg.out_channels} channels out for {unet_cfg.in_channels} in"
                         f"{' (a learned variance: its scheduler should say variance_type learned_range)' if learned else ''}")


def _stable_diffusion(lay: Layout, settings: dict, defaults: dict, meta: dict, allow_pickle: bool,
                      files_used: dict) -> Resolved:
    """Stable Diffusion 1.x/2.x -> the ``ldm`` family: KL autoencoder, cross-attention UNet, CLIP prompts."""
    label = lay.label
    unet_cfg = unet2d_condition_config(lay.config("unet"), label)
    vae_cfg, scale = autoencoder_kl_config(lay.config("vae"), label)
    state = lay.state("unet", allow_pickle, "unet.")
    state.update(lay.state("vae", allow_pickle, "autoencoder.vae."))
    # One naming for CLIP's weights whatever wrote them: text_model.* (transformers 5 saves without the prefix)
    text_state = lay.state("text_encoder", allow_pickle, "").renamed(clip_key)
    return stable_diffusion(label, Path(lay.root), unet_cfg, vae_cfg, scale, settings, defaults, lay.config("text_encoder"),
                            lay.root / lay.path("tokenizer", ""), state, text_state, meta, files_used)


def stable_diffusion(label: str, root: Path, unet_cfg, vae_cfg, scale: float, settings: dict, defaults: dict,
                     text_cfg: dict, tokenizer_dir: Path, state: LazyState, text_state: LazyState, meta: dict,
                     files: dict) -> Resolved:
    """The ``ldm`` record of a Stable Diffusion model, however its parts were found (pipeline or single file)."""
    if vae_cfg.latent_channels != unet_cfg.in_channels:
        raise GmkitError(f"{label}: the unet takes {unet_cfg.in_channels} channels but the vae's latent has "
                         f"{vae_cfg.latent_channels}")
    _check(settings["variance_type"] != "learned_range", label, "a learned variance in a Stable Diffusion pipeline")
    size = unet_cfg.sample_size * 2 ** (len(vae_cfg.block_out_channels) - 1)
    if text_cfg.get("hidden_size") not in (None, unet_cfg.cross_attention_dim):
        raise GmkitError(f"{label}: the text encoder's width {text_cfg.get('hidden_size')} differs from the unet's "
                         f"cross_attention_dim {unet_cfg.cross_attention_dim}")
    # The text encoder is not part of the gmkit state: the resolved model carries it, built on first use.
    encoder = functools.partial(CLIPText, text_cfg, tokenizer_dir, text_state, label)
    config = LDMConfig(image_size=size, in_channels=vae_cfg.in_channels,
                       autoencoder=AutoencoderConfig(in_channels=vae_cfg.in_channels, image_size=size, vae=vae_cfg,
                                                     scaling_factor=scale),
                       latent_scale=scale, unet=unet_cfg, text_encoder="clip",
                       text_max_length=int(text_cfg.get("max_position_embeddings", 77)), **settings)
    return Resolved(label, root, LDM, config, state, {**meta, "gmkit.family": LDM.name},
                    {**defaults, "guidance": 7.5}, text_encoder=encoder, text_state=text_state,
                    files={**files, "text_encoder.config": text_cfg, "tokenizer.path": str(tokenizer_dir)})
