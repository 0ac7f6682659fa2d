"""Metrics: distances against closed forms, and `gmkit metrics` on real data versus noise."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from gmkit.metrics import frechet_distance, kernel_inception_distance, precision_recall


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 3))
    b = rng.normal(1, 2, (20000, 3))
    # Diagonal case: sum (mu_a - mu_b)^2 + (s_a - s_b)^2 = 3 * 1 + 3 * 1 = 6.
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_survives_singular_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))  # fewer samples than dimensions
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0


def test_kid_near_zero_for_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, _ = kernel_inception_distance(a, b, subsets=5, subset_size=300)
    shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=5, subset_size=300)
    assert abs(same) < 0.05 and shifted > 20 * max(abs(same), 1e-3)


def test_precision_recall_extremes():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(500, 4))
    p, r = precision_recall(real, rng.normal(size=(500, 4)))
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(real, rng.normal(size=(500, 4)) + 20)
    assert p == 0 and r == 0
    # Mode collapse: every fake sample in one corner of the real data -> precise but no recall.
    p, r = precision_recall(real, real[:1] + 0.01 * rng.normal(size=(500, 4)))
    assert p > 0.9 and r < 0.1


def test_metrics_command_real_baseline_versus_noise(tmp_path):
    from gmkit.data import load_data
    from gmkit.imageio import save_images

    train = load_data("mnist", "train")
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:200]
    save_images(train.images[idx], str(tmp_path / "real.safetensors"))
    save_images(torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                str(tmp_path / "noise.safetensors"))
    real = json.loads(run_cli("metrics", str(tmp_path / "real.safetensors"), "--json").out)
    noise = json.loads(run_cli("metrics", str(tmp_path / "noise.safetensors"), "--json").out)
    base = real["baseline_real_train_vs_heldout"]["fd"]
    assert real["metrics"]["fd"] < 2 * base + 5
    assert noise["metrics"]["fd"] > 20 * real["metrics"]["fd"]
    assert noise["metrics"]["precision"] < 0.1 and real["metrics"]["precision"] > 0.7
    assert real["extractor"] == "gmkit-mnist" and "FD-gmkit-mnist" == real["names"]["fd"]


def test_metrics_folder_of_mixed_sizes_and_empty_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        size = 28 if i % 2 else 40
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    r = run_cli("metrics", str(folder), "--json")
    assert r.code == 0, r.err
    assert "different sizes" in r.err
    (tmp_path / "empty").mkdir()
    r = run_cli("metrics", str(tmp_path / "empty"))
    assert r.code != 0 and "no images" in r.err


def test_extractor_hash_is_checked(monkeypatch):
    from gmkit.errors import GmkitError
    from gmkit.metrics import extractor

    monkeypatch.setitem(extractor.EXTRACTORS, "mnist", ("extractor-mnist.safetensors", "0" * 64, "mnist", 28))
    with pytest.raises(GmkitError, match="sha256"):
        extractor.load_extractor("mnist")
