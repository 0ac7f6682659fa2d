"""Feature extractors from ``transformers``: DINOv2, CLIP, or any vision model saved with its image processor.

Images go through the model's own saved image processor (its resize, crop and normalisation), as
the model's authors run it. Features: CLIP-style models give their projected image embedding
(``get_image_features``, as CLIP-FD implementations use); others their pooled output (DINOv2: the
layer-normed CLS token, the features of Stein et al. 2023), else the mean of the last hidden state.
Weights are read from safetensors only, from a folder or a Hub repo (``org/name[@revision]``), which
resolves as Hub models do (``interop/hub.py``): one listing call, then only the files a model folder
needs; the cached snapshot at once when the Hub is unreachable, and ``HF_HUB_OFFLINE=1`` honoured.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
from pathlib import Path

import numpy as np
import torch

from ..errors import GmkitError
from .extractors import Extractor

HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


@contextlib.contextmanager
def quiet_transformers():
    """transformers' progress bars and torchvision fallback notices would bury gmkit's own messages."""
    from transformers.utils import logging as tlog

    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def resolve_folder(source: str, revision: str | None = None, token: str | None = None) -> Path:
    """A local folder as is; a Hub id (``org/name[@revision][/sub]``) through the Hub code models use."""
    from ..interop.hub import hub_repo, parse_hub_id

    p = Path(source)
    if p.is_dir():
        if revision is not None:
            raise GmkitError(f"extractor {source}: a local folder has no revisions (--revision applies to Hub ids)")
        if not (p / "config.json").is_file():
            raise GmkitError(f"{source}: no config.json here: not a saved transformers model (save_pretrained writes one)")
        return p
    try:
        hub = parse_hub_id(source, revision)
        if hub is None:
            raise GmkitError(f"{source}: no such folder, and not a Hub id (org/name)")
        files = hub_repo(hub, token)
        # The folder's own files only (transformers reads nothing from subfolders), safetensors weights alone.
        wanted = sorted(n for n in files.names if "/" not in n and any(fnmatch.fnmatch(n, pat) for pat in HUB_FILES))
        if "config.json" not in wanted:
            raise GmkitError(f"{hub.label}: no config.json: not a saved transformers model")
        if not any(n.endswith(".safetensors") for n in wanted):
            raise GmkitError(f"{hub.label}: no .safetensors weights (gmkit never unpickles .bin files)")
        return files.fetch(wanted)
    except GmkitError as e:
        raise GmkitError(f"extractor {e}") from None


def folder_identity(folder: Path) -> str:
    """The model's content: sha256 of its config, processor and weight files (each hashed once per
    path, size and time), independent of where the folder lives."""
    from .inception import sha256_file

    parts = [f"{f.name}:{sha256_file(f)}" for f in sorted(folder.iterdir())
             if f.is_file() and f.suffix in (".json", ".safetensors", ".txt", ".model")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def to_pil(images: torch.Tensor) -> list:
    """[-1, 1] tensors -> 8-bit RGB Pillow images (grey repeated), as a saved PNG would be read back."""
    from PIL import Image

    from ..imageio import to_uint8

    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return [Image.fromarray(a) for a in arr]


class HFExtractor(Extractor):
    batch = 32

    def __init__(self, source: str, name: str | None = None, revision: str | None = None, token: str | None = None):
        folder = resolve_folder(source, revision, token)
        if not any(folder.glob("*.safetensors")):
            raise GmkitError(f"extractor {source}: no .safetensors weights (gmkit never unpickles .bin files)")
        try:
            from transformers import AutoImageProcessor, AutoModel
        except ImportError:
            raise GmkitError("transformers extractors need transformers (pip install transformers)") from None
        with quiet_transformers():
            try:
                self.processor = AutoImageProcessor.from_pretrained(str(folder))
                self.model = AutoModel.from_pretrained(str(folder), use_safetensors=True).eval().requires_grad_(False)
            except (OSError, ValueError, KeyError) as e:
                raise GmkitError(f"extractor {source}: cannot load it as a transformers vision model with an image "
                                 f"processor ({str(e).splitlines()[0][:200]})") from None
        self.folder, self.source = folder, source
        self.name = name or (source if not Path(source).is_dir() else Path(source).resolve().name)
        self.identity = folder_identity(folder)
        self.fd_name, self.kid_name = f"FD-{self.name}", f"KID-{self.name}"
        self.clip_like = callable(getattr(self.model, "get_image_features", None))
        kind = "projected image embedding" if self.clip_like else "pooled output"
        self.description = f"{type(self.model).__name__} from {source} ({kind}; its saved image processor)"

    def to(self, device):
        self.model.to(device)
        return self

    def _features(self, images):
        dev = next(self.model.parameters()).device
        pixels = self.processor(images=to_pil(images), return_tensors="pt")["pixel_values"].to(dev)
        if self.clip_like:
            out = self.model.get_image_features(pixel_values=pixels)
            return getattr(out, "pooler_output", out)  # transformers 5 wraps it in an output object
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        h = out.last_hidden_state
        return h.mean(1) if h.ndim == 3 else h.flatten(2).mean(2)  # tokens, or a conv net's (N, C, H, W)

    @property
    def has_text_tower(self) -> bool:
        return bool(self.clip_like) and callable(getattr(self.model, "get_text_features", None))

    @torch.inference_mode()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        if not self.has_text_tower:
            raise GmkitError(f"extractor {self.name} has no text tower: the CLIP score needs a CLIP model (--extractor clip)")
        from transformers import AutoTokenizer

        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(self.folder))
        dev = next(self.model.parameters()).device
        limit = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", 77)
        outs = []
        for i in range(0, len(prompts), self.batch):
            t = tok(prompts[i:i + self.batch], padding=True, truncation=True, max_length=limit, return_tensors="pt")
            out = self.model.get_text_features(input_ids=t["input_ids"].to(dev), attention_mask=t["attention_mask"].to(dev))
            outs.append(getattr(out, "pooler_output", out).float().cpu())
        return torch.cat(outs)


def clip_score(extractor: HFExtractor, image_features: torch.Tensor, prompts: list[str]) -> dict:
    """CLIP score (Hessel et al. 2021, as torchmetrics reports it): 100 * max(cos(image, prompt), 0), averaged
    over images; ``image_features`` are ``extractor.features(images)``, one prompt per image."""
    text = extractor.text_features(prompts)
    img = image_features
    cos = torch.nn.functional.cosine_similarity(img.double(), text.double(), dim=-1)
    per_image = 100 * cos.clamp_min(0)
    return {"clip_score": float(per_image.mean()), "clip_score_std": float(per_image.std()) if len(per_image) > 1 else 0.0,
            "name": f"CLIP score ({extractor.source})", "n": len(img)}
