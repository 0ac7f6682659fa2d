"""Load time and peak memory of an SD-1.5-sized pipeline (random weights), each load in a fresh process.

    python benchmarks/load_memory.py                         # gmkit, bf16 and fp32
    python benchmarks/load_memory.py --compare ../gmkit-old  # also another gmkit checkout, same files

Writes (once) a diffusers-format Stable Diffusion 1.5 folder under --workdir: the real UNet and VAE
configs (860M + 84M parameters) with random fp16 weights, and a tiny CLIP text encoder (built only on
the first prompt, so not part of loading). Each measurement is a new Python process that imports
gmkit, then times ``registry.load(folder, dtype=...)`` (wall clock, and CPU time: on a shared
machine the CPU seconds say what an idle one would take) and reads its peak RSS (``ru_maxrss``).
Targets (issue 20): load under 10 s, peak RSS at most 1.5x the final weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SD15_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
             "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
             "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SD15_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4}
TEXT = {"architectures": ["CLIPTextModel"], "hidden_size": 768, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 1000, "bos_token_id": 998,
        "eos_token_id": 999, "pad_token_id": 999, "hidden_act": "quick_gelu", "model_type": "clip_text_model"}
SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    """A safetensors file of random fp16 tensors, written tensor by tensor (never all in memory)."""
    import torch

    names = sorted(shapes)
    header, offset = {}, 0
    for k in names:
        n = 2
        for d in shapes[k]:
            n *= d
        header[k] = {"dtype": "F16", "shape": list(shapes[k]), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    g = torch.Generator().manual_seed(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for k in names:
            f.write((torch.randn(shapes[k], generator=g) * 0.02).half().numpy().tobytes())
    tmp.rename(path)


def make_folder(root: Path) -> Path:
    """The SD-1.5-sized pipeline folder (written once)."""
    if (root / "model_index.json").is_file():
        return root
    import torch

    from gmkit.checkpoint import parameters_on_meta
    from gmkit.interop.diffusers_configs import autoencoder_kl_config, unet2d_condition_config
    from gmkit.nn.autoencoder_kl import AutoencoderKL
    from gmkit.nn.unet import UNet

    for comp, cfg in (("unet", SD15_UNET), ("vae", SD15_VAE), ("text_encoder", TEXT)):
        (root / comp).mkdir(parents=True, exist_ok=True)
        (root / comp / "config.json").write_text(json.dumps(cfg))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(1000)}))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    with parameters_on_meta():  # shapes only: the weights are drawn as they are written
        unet = UNet(unet2d_condition_config(SD15_UNET, "sd15"))
        vae = AutoencoderKL(autoencoder_kl_config(SD15_VAE, "sd15")[0])
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT.items() if k != "architectures"}))
    for comp, model, stem in (("unet", unet, "diffusion_pytorch_model"), ("vae", vae, "diffusion_pytorch_model"),
                              ("text_encoder", text, "model")):
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        write_random_safetensors(root / comp / f"{stem}.safetensors", shapes, seed=len(comp))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    return root


CHILD = r"""
import json, resource, sys, time
import torch
import gmkit
from gmkit.registry import load
assert gmkit.__file__.startswith(sys.argv[3]), gmkit.__file__
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
dtype = getattr(torch, sys.argv[2])
t0, c0 = time.perf_counter(), time.process_time()
net, _ = load(sys.argv[1], dtype=dtype)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
weights = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "weights_gib": round(weights / 2**30, 3),
                  "baseline_rss_gib": round(base / 2**30, 3), "peak_rss_gib": round(peak / 2**30, 3),
                  "peak_over_weights": round(peak / weights, 3), "load_rss_over_weights": round((peak - base) / weights, 3)}))
"""


def measure(folder: Path, dtype: str, code_root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # cwd = the tree measured: ``python -c`` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype, str(code_root)], env=env, capture_output=True, text=True,
                         cwd=code_root)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "gmkit-load-bench")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--compare", type=Path, default=None, help="Another gmkit source tree to measure on the same files.")
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    folder = make_folder(args.workdir / "sd15-random")
    rows = []
    for dtype in args.dtypes.split(","):
        for label, root in (("gmkit", here), *((("compare", args.compare),) if args.compare else ())):
            row = {"code": label, "dtype": dtype, **measure(folder, dtype, root)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(json.dumps({"folder": str(folder), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
