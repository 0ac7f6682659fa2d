"""The shipped DALL-E-style default: small, says where it came from, follows its prompts, completes images."""

from __future__ import annotations

import json

import torch


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def test_bundled_vqgpt_is_small_and_says_where_it_came_from():
    from gmkit.checkpoint import read_metadata
    from gmkit.registry import bundled_path

    path = bundled_path("vqgpt")
    assert path.stat().st_size <= 16 * 2**20
    meta = read_metadata(path)
    recipe = json.loads(meta["gmkit.recipe"])
    assert recipe["command"].startswith("gmkit train vqgpt")
    assert recipe["autoencoder_recipe"]["command"].startswith("gmkit train vqvae")
    assert "CC BY-SA" in recipe["data_license"]


def test_bundled_vqgpt_follows_its_prompts():
    """Images for eight emoji names pick their own prompt out of the eight (TIS scorer), far above chance."""
    from gmkit.metrics.text_image import adherence, load_scorer
    from gmkit.registry import load

    net, resolved = load("vqgpt")
    prompts = ["red apple", "rocket", "cityscape at dusk", "snowman", "tangerine", "cat face", "rainbow", "slice of pizza"]
    images = net.sample(_gens(len(prompts)), prompt=prompts, **resolved.defaults)  # what `gmkit sample vqgpt` uses
    result = adherence(load_scorer(), net.text, images, prompts)
    assert result["retrieval_top1"] >= 0.375, result  # chance: 1/8; measured 5/8


def test_bundled_vqgpt_cache_and_completion():
    from gmkit.registry import load

    net, _ = load("vqgpt")
    a = net.sample_codes(_gens(2), prompt="a rocket", top_k=50)
    assert torch.equal(a, net.sample_codes(_gens(2), prompt="a rocket", top_k=50, use_cache=False))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 16:, :] = 1
    codes = net.sample_codes(_gens(2), prompt="a rocket", image=x, mask=mask)
    assert torch.equal(codes[:, :4], net.encode(x)["codes"][:, :4].expand(2, -1, -1))
