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
