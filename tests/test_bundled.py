"""The shipped DDPM default: its samples are digits, and DDIM inversion gives its input back."""

import torch

from gmkit.data import load_data
from gmkit.metrics.mnist import extract, load_extractor
from gmkit.registry import load


def test_bundled_ddim_samples_look_like_digits():
    net, src = load("ddim")
    assert src.defaults == {"sampler": "ddim", "steps": 50}
    x = net.sample([torch.Generator().manual_seed(i) for i in range(32)], sampler="ddim", steps=20)
    logits, _ = extract(load_extractor("mnist"), x)
    probs = logits.softmax(1)
    assert float((probs.max(1).values > 0.9).float().mean()) > 0.6  # confidently read as digits
    assert len(set(probs.argmax(1).tolist())) >= 7  # and not one digit over and over


def test_bundled_ddim_inversion_reconstructs_held_out_digits():
    net, _ = load("ddim")
    x = load_data("mnist", "test").images()[::125][:4]
    z = net.encode(x, steps=20)["noise"]
    back = net.sample([torch.Generator().manual_seed(i) for i in range(4)], sampler="ddim", steps=20, init=z)
    assert float((back - x).abs().mean()) < 0.1
    noise = net.sample([torch.Generator().manual_seed(i) for i in range(4)], sampler="ddim", steps=20)
    assert float((noise - x).abs().mean()) > 3 * float((back - x).abs().mean())  # far better than chance


def test_bundled_recipes_name_no_local_paths():
    """A shipped recipe tells how a file was trained, never where on its trainer's disk (as `gmkit push` does)."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    import gmkit
    from gmkit.publish import scrub_recipe

    files = sorted((Path(gmkit.__file__).parent / "weights").glob("*.safetensors"))
    recipes = 0
    for f in files:
        with safe_open(str(f), "pt") as h:
            text = (h.metadata() or {}).get("gmkit.recipe")
        if text:
            recipes += 1
            assert scrub_recipe(json.loads(text)) == json.loads(text), f.name
    assert recipes >= 8
