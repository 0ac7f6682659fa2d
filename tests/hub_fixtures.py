"""Tiny diffusers models and a fake Hugging Face cache reproducing real Hub repos' layouts.

The file lists and config keys follow the public repos (google/ddpm-cifar10-32: flat, with
``.bin`` and ``.safetensors``; CompVis/ldm-celebahq-256: ``.bin`` only, VQ config without a
scaling factor; stable-diffusion-v1-5: fp16 variants, pickles, safety checker); only the sizes
are shrunk so every model has a few thousand random parameters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

diffusers = __import__("diffusers")

NET_TOL, RUN_TOL = 1e-5, 1e-4


def rel_err(ours, ref) -> float:
    ours, ref = torch.as_tensor(ours).float(), torch.as_tensor(ref).float()
    assert ours.shape == ref.shape
    return float((ours - ref).abs().max() / ref.abs().max())


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights from ``seed`` alone, every parameter perturbed so no zero-initialised layer can hide a wrong mapping.

    Layers are re-initialised under the seed first: a constructor draws from the global RNG, whose
    state depends on which tests ran before, and the sampling tolerances must not.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def gens(n: int = 2) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def as_np_images(x: torch.Tensor):
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def tiny_clip_tokenizer(folder: Path):
    """A byte-level CLIP tokenizer with no merges (every character a token): built offline."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77), len(tokens)


def tiny_sd_pipeline(base: Path, unet_kw: dict | None = None, vae_kw: dict | None = None, text_kw: dict | None = None):
    """A StableDiffusionPipeline with SD 1.x scheduler settings and tiny random components."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab = tiny_clip_tokenizer(base / "vocab")
    text_args = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    text = randomize(CLIPTextModel(CLIPTextConfig(**{**text_args, **(text_kw or {})})), 2)
    vae_args = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    latent_channels=4, norm_num_groups=4, sample_size=16)
    vae = randomize(diffusers.AutoencoderKL(**{**vae_args, **(vae_kw or {})}), 4)
    args = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2)
    args.update(unet_kw or {})
    unet = randomize(diffusers.UNet2DConditionModel(**args), 3)
    # Stable Diffusion 1.x's scheduler settings: PNDM, scaled-linear betas, steps offset 1, alpha-bar_0 at the end.
    scheduler = diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                        set_alpha_to_one=False, skip_prk_steps=True)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- a fake Hugging Face cache --------------------------------------------------------------------

def cache_repo(cache: Path, repo: str, folder: Path, ref: str = "main", commit: str | None = None) -> str:
    """File ``folder`` as a snapshot of ``repo`` under ``ref``, the way huggingface_hub lays out its cache
    (``models--org--name/snapshots/<commit>/`` and ``refs/<ref>``, so ``refs/refs/pr/1`` for ``refs/pr/1``)."""
    commit = commit or (f"{abs(hash((repo, ref))) % 16 ** 12:012x}" * 4)[:40]
    base = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit, dirs_exist_ok=True)
    ref_file = base / "refs" / ref
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    ref_file.write_text(commit)
    return commit


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_weights(model: torch.nn.Module, folder: Path, stem: str = "diffusion_pytorch_model", variant: str | None = None,
                 dtype=None) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in model.state_dict().items()}
    v = f".{variant}" if variant else ""
    save_file(state, str(folder / f"{stem}{v}.safetensors"), metadata={"format": "pt"})


CIFAR_UNET = {  # google/ddpm-cifar10-32 config.json, sizes shrunk (4 levels, attention at the second)
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [8, 16, 16, 16], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 1, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 4, "out_channels": 3, "sample_size": 16, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
CIFAR_SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02, "beta_schedule": "linear",
                   "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
                   "variance_type": "fixed_large"}
CIFAR_INDEX = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1", "scheduler": ["diffusers", "DDPMScheduler"],
               "unet": ["diffusers", "UNet2DModel"]}


def ddpm_cifar_repo(folder: Path) -> Path:
    """google/ddpm-cifar10-32: everything at the repo root, weights as .bin and .safetensors."""
    unet = randomize(diffusers.UNet2DModel(**{k: v for k, v in CIFAR_UNET.items() if not k.startswith("_")}), 11)
    write_json(folder / "config.json", CIFAR_UNET)
    write_json(folder / "scheduler_config.json", CIFAR_SCHEDULER)
    write_json(folder / "model_index.json", CIFAR_INDEX)
    save_weights(unet, folder)
    torch.save(unet.state_dict(), folder / "diffusion_pytorch_model.bin")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- pytorch\n- diffusers\n"
                                      "- unconditional-image-generation\n---\n# Denoising Diffusion Probabilistic Models (DDPM)\n")
    (folder / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    return folder


CELEBAHQ_INDEX = {"_class_name": "LDMPipeline", "_diffusers_version": "0.0.4", "scheduler": ["diffusers", "DDIMScheduler"],
                  "unet": ["diffusers", "UNet2DModel"], "vqvae": ["diffusers", "VQModel"]}
CELEBAHQ_SCHEDULER = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.0.4", "beta_end": 0.0195,
                      "beta_schedule": "scaled_linear", "beta_start": 0.0015, "clip_sample": False,
                      "num_train_timesteps": 1000, "trained_betas": None}
CELEBAHQ_UNET = {  # sizes shrunk; 2022 keys (no attn_norm_num_groups, add_attention, ...)
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [8, 16], "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 3, "layers_per_block": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 4, "out_channels": 3, "sample_size": 8,
    "time_embedding_type": "positional", "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
CELEBAHQ_VQ = {  # no scaling_factor, no norm_num_groups (the class default 32 fits 32-wide blocks)
    "_class_name": "VQModel", "_diffusers_version": "0.1.2", "act_fn": "silu", "block_out_channels": [32, 32],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "in_channels": 3, "latent_channels": 3,
    "layers_per_block": 1, "num_vq_embeddings": 16, "out_channels": 3, "sample_size": 16,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}


def _build(cls, cfg: dict, seed: int):
    return randomize(cls(**{k: v for k, v in cfg.items() if not k.startswith("_")}), seed)


def ldm_celebahq_repo(folder: Path) -> Path:
    """CompVis/ldm-celebahq-256: component folders, pickled weights only, a VQ config without scaling_factor."""
    write_json(folder / "model_index.json", CELEBAHQ_INDEX)
    write_json(folder / "scheduler" / "scheduler_config.json", CELEBAHQ_SCHEDULER)
    for comp, cls, cfg, seed in (("unet", diffusers.UNet2DModel, CELEBAHQ_UNET, 12), ("vqvae", diffusers.VQModel, CELEBAHQ_VQ, 13)):
        write_json(folder / comp / "config.json", cfg)
        torch.save(_build(cls, cfg, seed).state_dict(), folder / comp / "diffusion_pytorch_model.bin")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- pytorch\n- diffusers\n"
                                      "- unconditional-image-generation\n---\n# Latent Diffusion Models (LDM)\n")
    return folder


def safetensors_twin(folder: Path, out: Path) -> Path:
    """The repo as the Hub's conversion bot leaves it in a refs/pr/N: every .bin beside a .safetensors."""
    from safetensors.torch import save_file

    shutil.copytree(folder, out)
    for b in out.rglob("*.bin"):
        state = torch.load(b, weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(b.with_suffix(".safetensors")))
    return out


SD_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def sd15_repo(pipe, folder: Path) -> Path:
    """stable-diffusion-v1-5: every component in fp32 and fp16, as safetensors and pickles (non-EMA UNet too),
    with the safety checker and feature extractor that gmkit never reads."""
    pipe.save_pretrained(folder)
    for comp in ("unet", "vae"):
        model = getattr(pipe, comp)
        save_weights(model, folder / comp, variant="fp16", dtype=torch.float16)
        torch.save(model.state_dict(), folder / comp / "diffusion_pytorch_model.bin")
        torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / comp / "diffusion_pytorch_model.fp16.bin")
    save_weights(pipe.unet, folder / "unet", stem="diffusion_pytorch_model.non_ema")
    # CLIP's weights as the real repo holds them: text_model.* names (transformers 5 saves them without)
    from safetensors.torch import save_file

    text = {("" if k.startswith("text_model.") else "text_model.") + k: v.contiguous()
            for k, v in pipe.text_encoder.state_dict().items()}
    save_file(text, str(folder / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    save_file({k: v.half() for k, v in text.items()}, str(folder / "text_encoder" / "model.fp16.safetensors"))
    torch.save(text, folder / "text_encoder" / "pytorch_model.bin")
    index = json.loads((folder / "model_index.json").read_text())
    write_json(folder / "model_index.json", {**index, **{k: v for k, v in SD_INDEX.items() if k != "_diffusers_version"}})
    write_json(folder / "safety_checker" / "config.json", {"_name_or_path": "CompVis/stable-diffusion-safety-checker",
                                                          "architectures": ["StableDiffusionSafetyChecker"]})
    (folder / "safety_checker" / "model.safetensors").write_bytes(b"not read by gmkit")
    write_json(folder / "feature_extractor" / "preprocessor_config.json", {"crop_size": 224, "do_resize": True})
    return folder


def sharded_ddpm_repo(folder: Path, unet) -> Path:
    """A DDPM pipeline whose UNet is split into shards listed by diffusion_pytorch_model.safetensors.index.json."""
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(folder / "unet", max_shard_size="20KB")
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    return folder
