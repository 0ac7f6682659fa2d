"""What ``gmkit push`` uploads: a trained checkpoint, a sample grid and a generated model card.

``prepare(run, repo, folder)`` writes the upload folder (the whole of a dry run); ``upload`` sends
it to the Hugging Face Hub with huggingface_hub. The card is built from the checkpoint's own
metadata (family, config, recipe), so it describes exactly the file next to it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .checkpoint import copy_with_metadata, read_metadata, write_text
from .errors import GmkitError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def checkpoint_of(run: str) -> Path:
    """The model file of a run folder (its model.safetensors) or a checkpoint file given directly."""
    path = Path(run)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise GmkitError(f"{run}: not a run folder (it has no model.safetensors)")
        return path / "model.safetensors"
    if path.is_file() and path.suffix == ".safetensors":
        return path
    raise GmkitError(f"{run}: no such run folder or .safetensors checkpoint")


def _latest_preview(run: Path) -> Path | None:
    grids = sorted((run / "samples").glob("step_*.png")) if (run / "samples").is_dir() else []
    return grids[-1] if grids else None


def _fresh_grid(ckpt: Path, out: Path, n: int = 16) -> None:
    """Sample a grid with the family's quick preview options, seeds 0..n-1, on the CPU."""
    import torch

    from .imageio import save_images
    from .registry import load

    net, _ = load(str(ckpt))
    with torch.inference_mode():
        x = net.sample([torch.Generator().manual_seed(i) for i in range(n)], **net.preview_options)
    save_images(x, str(out))


# Per bundled data set: (licence id of the data, which the trained weights follow; Hub dataset ids).
DATA_CARDS = {"openmoji": ("cc-by-sa-4.0", []), "mnist": ("mit", ["ylecun/mnist"]),
              "mnist-captions": ("mit", ["ylecun/mnist"]), "fashion-mnist": ("mit", ["zalando-datasets/fashion_mnist"]),
              "digits": ("cc-by-4.0", [])}
PIPELINE_TAGS = {"ldm": "text-to-image", "sr": "image-to-image"}  # others: unconditional-image-generation
_ABSOLUTE = re.compile(r"(?<![\w.:/-])(?:~|[A-Za-z]:)?[/\\][^\s'\"`]+")


def scrub(text: str) -> str:
    """``text`` with absolute local paths cut to their last component: a card never shows your disk."""
    return _ABSOLUTE.sub(lambda m: ".../" + re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1], text)


def scrub_recipe(value):
    """The recipe (nested dicts, lists, strings) with every absolute local path cut, as ``scrub``."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_recipe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_recipe(v) for v in value]
    return value


def source_url() -> str | None:
    """Where gmkit's source lives (it is not on PyPI): GMKIT_SOURCE_URL, else the package's Source URL."""
    import os
    from importlib import metadata

    url = os.environ.get("GMKIT_SOURCE_URL")
    if url:
        return url
    try:
        for entry in metadata.metadata("gmkit").get_all("Project-URL") or []:
            label, _, link = entry.partition(",")
            if label.strip().lower() in ("source", "repository", "homepage"):
                return link.strip()
    except metadata.PackageNotFoundError:
        pass
    return None


def install_lines() -> list[str]:
    url = source_url()
    if url:
        return ["# gmkit is not on PyPI: install it from its source repository", f'pip install "gmkit @ git+{url}"']
    return ["# gmkit is not on PyPI: install it from a checkout of its source repository", "pip install -e ./gmkit"]


def card_data(meta: dict, fmt: str = "gmkit", license_id: str | None = None):
    """The card's YAML header (huggingface_hub.ModelCardData): licence, pipeline tag, library, data sets."""
    from huggingface_hub import ModelCardData

    family = meta.get("gmkit.family", "?")
    recipe = json.loads(meta.get("gmkit.recipe", "{}") or "{}")
    data = str(recipe.get("data") or "").split(":")[0]
    licence, datasets = DATA_CARDS.get(data, (None, []))
    if recipe.get("data_license", "").startswith("CC BY-SA 4.0"):
        licence = "cc-by-sa-4.0"
    return ModelCardData(license=license_id or licence or "unknown", library_name=fmt,
                         pipeline_tag=PIPELINE_TAGS.get(family, "unconditional-image-generation"),
                         datasets=datasets or None, tags=["gmkit", family, "generative-model"] + (["diffusers"] if fmt == "diffusers" else []))


def model_card(repo: str, meta: dict, has_grid: bool, fmt: str = "gmkit", license_id: str | None = None,
               keep_paths: bool = False) -> str:
    """The README.md model card: a ModelCardData header, then how to use the model and how it was trained.
    Absolute local paths are cut to their last component unless ``keep_paths``."""
    from huggingface_hub import ModelCard

    clean = (lambda text: text) if keep_paths else scrub

    family = meta.get("gmkit.family", "?")
    recipe = json.loads(meta.get("gmkit.recipe", "{}") or "{}")
    config = json.loads(meta.get("gmkit.config", "{}") or "{}")
    data = clean(str(recipe.get("data") or "unknown"))
    lines = [f"# {repo.split('/')[-1]}", "", f"A **{family}** model trained with gmkit on **{data}**."]
    if recipe.get("data_note"):
        lines += ["", f"Data: {clean(recipe['data_note'])}"]
    if recipe.get("data_license"):
        lines += ["", f"Data license: {recipe['data_license']}"]
    if has_grid:
        lines += ["", "![samples](samples.png)", "", "Samples with seeds 0 to 15 (image i from seed i)."]
    prompt = ' --prompt "a red apple"' if family == "ldm" else ""
    call = 'prompt="a red apple"' if family == "ldm" else "batch_size=4"
    extra = ', prompt="a red apple"' if family == "ldm" else ""
    if fmt == "diffusers":
        lines += ["", "## Use it with diffusers", "", "```python", "from diffusers import DiffusionPipeline", "",
                  f'pipe = DiffusionPipeline.from_pretrained("{repo}")',
                  f"images = pipe({call}).images", "```"]
    lines += ["", "## Sample it with gmkit", "", "```bash", *install_lines(),
              f"gmkit sample {repo}{prompt} -n 16 --seed 0 --out samples.png", "```", "", "or in Python:", "", "```python",
              "import gmkit", "",
              f'model = gmkit.load("{repo}")  # any source `gmkit sample` takes',
              f"images = model.sample(16, seed=0{extra})  # PIL images; image i from seed i, as the command above",
              'images[0].save("sample0.png")',
              "```", "", "## Training recipe", ""]
    rows = [("command", recipe.get("command")), ("steps", recipe.get("step")), ("parameters", recipe.get("params")),
            ("training images", recipe.get("train_images")), ("image size", recipe.get("image_size")),
            ("device", recipe.get("device")), ("processes", recipe.get("world_size")), ("torch", recipe.get("torch")),
            ("gmkit", meta.get("gmkit.version")), ("autoencoder", recipe.get("autoencoder"))]
    lines += ["| | |", "|---|---|"] + [f"| {k} | `{clean(str(v))}` |" for k, v in rows if v not in (None, "")]
    if recipe.get("earlier_commands"):
        lines += ["", "Resumed from: " + "; ".join(f"`{clean(c)}`" for c in recipe["earlier_commands"])]
    lines += ["", "## Config", "", "```json", clean(json.dumps(config, indent=2)), "```", ""]
    lines += (["The weights are one self-describing `model.safetensors`: its metadata holds this config, the family "
               "name and the recipe above.", ""] if fmt == "gmkit" else
              ["The weights are in diffusers' layout (`model_index.json`, one folder per component), written by "
               "`gmkit export --format diffusers`; gmkit reads this layout too.", ""])
    header = card_data(meta, fmt, license_id).to_yaml()
    return str(ModelCard(f"---\n{header}\n---\n\n" + "\n".join(lines)))


# What prepare / export_diffusers write at the top of an upload folder: a default folder holding only
# these (and gmkit's card) is gmkit's own and may be written afresh; anything else there is the user's.
UPLOAD_ENTRIES = {"README.md", "samples.png", "model.safetensors", "config.json", "model_index.json", "unet", "vqvae",
                  "vae", "scheduler", "text_encoder", "tokenizer"}


def _is_upload_folder(folder: Path) -> bool:
    card = folder / "README.md"
    try:
        names = {p.name for p in folder.iterdir()}
        ours = card.is_file() and "- gmkit" in card.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    return ours and names <= UPLOAD_ENTRIES


def prepare(run: str, repo: str, folder: Path, replace: bool = False, fmt: str = "gmkit",
            license_id: str | None = None, keep_paths: bool = False) -> list[str]:
    """Write the upload folder: README.md (model card), samples.png, and the model: model.safetensors and
    config.json (``fmt="gmkit"``), or the diffusers layout (``fmt="diffusers"``, ``gmkit export``).

    ``replace``: an existing folder at gmkit's own default location is written afresh if it holds only what
    an earlier dry run wrote (otherwise it is refused: it is never deleted whatever it holds).
    ``keep_paths``: the card and the model's recipe keep absolute local paths (by default cut to their last
    component: an upload never shows your disk).
    """
    if not REPO_ID.match(repo):
        raise GmkitError(f"{repo!r}: expected a Hub repo id like yourname/gmkit-mnist-ddpm")
    ckpt = checkpoint_of(run)
    meta = read_metadata(ckpt)
    if not meta.get("gmkit.family"):
        raise GmkitError(f"{ckpt}: not a gmkit checkpoint (no gmkit.family in its metadata)")
    folder = Path(folder)
    if replace and folder.is_dir() and _is_upload_folder(folder):
        shutil.rmtree(folder)
    if folder.exists() and any(folder.iterdir()):
        raise GmkitError(f"{folder}: already exists and is not empty" + (" (it holds files an earlier dry run did not write)"
                         if replace else "") + "; remove it or give another --out")
    if fmt not in ("gmkit", "diffusers"):
        raise GmkitError(f"format {fmt!r}: push writes gmkit or diffusers")
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "diffusers":
        from .interop.export import export_diffusers
        from .registry import load

        net, src = load(str(ckpt))
        export_diffusers(net, src, folder)
    else:
        shipped = dict(meta)
        if not keep_paths and meta.get("gmkit.recipe"):
            shipped["gmkit.recipe"] = json.dumps(scrub_recipe(json.loads(meta["gmkit.recipe"])))
        copy_with_metadata(ckpt, folder / "model.safetensors", shipped)
        write_text(folder / "config.json", json.dumps({"gmkit.family": meta["gmkit.family"],
                                                       "config": json.loads(meta.get("gmkit.config", "{}"))}, indent=2) + "\n")
    preview = _latest_preview(ckpt.parent)
    if preview is not None:
        from .checkpoint import atomic_write

        atomic_write(folder / "samples.png", lambda tmp: shutil.copyfile(preview, tmp))
    else:
        _fresh_grid(ckpt, folder / "samples.png")
    write_text(folder / "README.md", model_card(repo, meta, has_grid=True, fmt=fmt, license_id=license_id,
                                                keep_paths=keep_paths))
    return sorted(p.name for p in folder.iterdir())


def upload(folder: Path, repo: str, private: bool = False, message: str | None = None) -> str:
    """Create the repo if needed and upload the folder in one commit; returns the repo's URL."""
    from .interop.hub import hub_offline

    if hub_offline():
        raise GmkitError("HF_HUB_OFFLINE is set: cannot upload (use --dry-run to write the folder only)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=message or "Upload gmkit model")
    except HfHubHTTPError as e:
        raise GmkitError(f"{repo}: upload failed ({str(e).splitlines()[0]}); log in with `hf auth login`") from None
    except OSError as e:
        raise GmkitError(f"{repo}: upload failed ({e})") from None
    return str(url)
