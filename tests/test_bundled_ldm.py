"""The shipped text-to-image default: it loads offline, is small, and follows its prompts."""

from __future__ import annotations

import json

import torch

from conftest import run_cli


def test_bundled_ldm_is_small_and_says_where_it_came_from():
    from gmkit.checkpoint import read_metadata
    from gmkit.registry import bundled_path

    path = bundled_path("ldm")
    assert path.stat().st_size <= 24 * 2**20
    meta = read_metadata(path)
    recipe = json.loads(meta["gmkit.recipe"])
    assert recipe["command"].startswith("gmkit train ldm")
    assert "CC BY-SA" in recipe["data_license"]


def test_bundled_ldm_sample_is_deterministic(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        r = run_cli("sample", "ldm", "--prompt", "a futuristic cityscape at sunset", "--steps", "20", "--out", str(out))
        assert r.code == 0, r.err
    assert a.read_bytes() == b.read_bytes()


def test_bundled_ldm_follows_its_prompts():
    """Images for eight emoji names pick their own prompt out of the eight (TIS scorer), far above chance."""
    from gmkit.metrics.text_image import adherence, load_scorer
    from gmkit.registry import load

    net, _ = load("ldm")
    prompts = ["red apple", "rocket", "cityscape at dusk", "snowman", "tangerine", "cat face", "rainbow", "slice of pizza"]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = net.sample(gens, prompt=prompts, guidance=4.0, sampler="ddim", steps=25)
    result = adherence(load_scorer(), net.text, images, prompts)
    assert result["retrieval_top1"] >= 0.5, result  # chance: 1/8
