"""Metrics: distances against closed forms, and `gmkit metrics` on real data versus noise."""

import json

import numpy as np
import pytest
import torch

from conftest import data_images, run_cli
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
    save_images(data_images(train)[idx], str(tmp_path / "real.safetensors"))
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
    from gmkit.metrics import mnist

    monkeypatch.setitem(mnist.EXTRACTORS, "mnist", ("extractor-mnist.safetensors", "0" * 64, "mnist", 28))
    with pytest.raises(GmkitError, match="sha256"):
        mnist.load_extractor("mnist")


def test_precision_recall_density_coverage_equal_prdc():
    """Against Naeem et al.'s reference implementation (the prdc package), on continuous features."""
    from prdc import compute_prdc

    from gmkit.metrics.distances import density_coverage

    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(300, 8)), rng.normal(0.3, 1.2, size=(200, 8))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        ref3, ref5 = compute_prdc(real, fake, 3), compute_prdc(real, fake, 5)
    assert precision_recall(real, fake, 3) == pytest.approx((ref3["precision"], ref3["recall"]), abs=1e-6)  # counts: 1/200 apart
    assert density_coverage(real, fake, 5) == pytest.approx((ref5["density"], ref5["coverage"]), abs=1e-6)


def test_statistics_file_round_trips_exactly(tmp_path):
    from gmkit.data import load_data
    from gmkit.imageio import save_images
    from gmkit.metrics.extractors import get_extractor
    from gmkit.metrics.reference import from_source, read_stats

    stats = tmp_path / "mnist-ref.safetensors"
    r = run_cli("metrics", "mnist", "--save-stats", str(stats))
    assert r.code == 0, r.err
    fresh, saved = from_source("mnist", get_extractor("mnist"), pool_size=10_000), read_stats(stats)
    for name in ("features", "mean", "cov", "pool"):
        a, b = getattr(fresh, name), getattr(saved, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert (saved.extractor, saved.channels, saved.size) == ("gmkit-mnist", 1, (28, 28))
    held = data_images(load_data("mnist", "train"))[:64]
    save_images(held, str(tmp_path / "x.safetensors"))
    by_file = json.loads(run_cli("metrics", str(tmp_path / "x.safetensors"), "--reference", str(stats), "--json").out)
    by_name = json.loads(run_cli("metrics", str(tmp_path / "x.safetensors"), "--reference", "mnist", "--json").out)
    for key in ("metrics", "baseline_real_train_vs_heldout", "names", "extractor", "reference"):
        assert by_file[key] == by_name[key], key
    # a statistics file only answers for its own extractor
    r = run_cli("metrics", str(tmp_path / "x.safetensors"), "--reference", str(stats), "--extractor", "inception",
                "--extractor-weights", str(stats))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1


def test_metrics_compare_and_bench_on_an_rgb_folder(rgb_folders, tiny_dinov2, tmp_path):
    ref, samples = rgb_folders
    ext = str(tiny_dinov2)
    r = run_cli("metrics", str(samples), "--reference", str(ref), "--extractor", ext, "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["names"] == {"fd": f"FD-{tiny_dinov2.name}", "kid": f"KID-{tiny_dinov2.name}"}
    assert res["extractor"] == tiny_dinov2.name and "held-out split" in res["reference"]
    for m in (res["metrics"], res["baseline_real_train_vs_heldout"]):
        assert {"fd", "kid", "precision", "recall", "density", "coverage"} <= set(m) and m["fd"] > 0
    assert res["baseline_n"] == res["n"] == 12 and not res["warnings"]
    r = run_cli("metrics", str(samples), "--reference", str(ref), "--extractor", ext)  # the table names the extractor
    assert r.code == 0 and f"FD-{tiny_dinov2.name}" in r.out and f"extractor: {tiny_dinov2.name}" in r.out

    # an RGB model trained on the folder (the bundled vae is grey 28 px), then compare (with the folder of samples beside it) and bench --quality
    run = tmp_path / "rgb-vae"
    r = run_cli("train", "vae", "--data", str(ref), "--steps", "2", "--batch-size", "4", "--out", str(run), "--quiet",
                "--set", "train.preview=0")
    assert r.code == 0, r.err
    r = run_cli("compare", "--models", f"{run},{samples},vae", "--data", str(ref), "--extractor", ext, "--samples", "6",
                "--slow-samples", "6", "--sweep-steps", "", "--likelihood-images", "2", "--batch-size", "6", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["extractor"]["name"] == tiny_dinov2.name
    model, folder, vae = report["models"]
    assert model["cells"]["quality"]["fd_name"] == f"FD-{tiny_dinov2.name}" and model["cells"]["quality"]["n"] == 6
    assert folder["cells"]["quality"]["fd"] > 0
    assert "n/a" in vae["cells"]["quality"]["text"]  # grey 28 px model against RGB data: n/a with the reason
    assert any(f"FD-{tiny_dinov2.name}" in n for n in report["notes"])
    r = run_cli("bench", "--models", str(run), "--batch-size", "3", "--runs", "1", "--quality",
                "--quality-samples", "6", "--reference", str(ref), "--extractor", ext, "--json")
    assert r.code == 0, r.err
    bench = json.loads(r.out)
    q = bench["results"][0]["quality"]
    assert q["n"] == 6 and q["fd_name"] == f"FD-{tiny_dinov2.name}" and q["fd"] > 0
    assert bench["environment"]["extractor"] == tiny_dinov2.name


def test_refusals_and_warnings_are_one_line(rgb_folders, tmp_path):
    ref, samples = rgb_folders
    (tmp_path / "empty").mkdir()
    cases = [
        (("metrics", str(samples), "--reference", str(ref), "--extractor", "nosuch"), "unknown"),
        (("metrics", str(samples), "--reference", str(tmp_path / "empty"), "--extractor", "mnist"), "no images"),
        (("metrics", str(tmp_path / "empty")), "no images"),
        (("metrics", str(samples), "--reference", "mnist"), "3 channel(s) but reference mnist has 1"),
        (("metrics", str(samples), "--reference", str(ref), "--extractor", "mnist", "--prompt", "a cat"), "CLIP"),
    ]
    for args, expected in cases:
        r = run_cli(*args)
        assert r.code == 2 and expected in r.err and len(r.err.strip().splitlines()) == 1, (args, r.err)
    # the digit extractor on colour images: measured, with a warning that says what it is worth
    r = run_cli("metrics", str(samples), "--reference", str(ref), "--extractor", "mnist", "--json")
    assert r.code == 0 and "warning: the mnist extractor knows grey handwritten digits only" in r.err
    assert json.loads(r.out)["warnings"]


def test_a_folder_is_scored_in_batches_as_the_whole_tensor_would_be(rgb_folders, tiny_dinov2, monkeypatch):
    from gmkit.imageio import ImageSet, load_image_set
    from gmkit.metrics import evaluate

    ref, samples = rgb_folders
    whole = evaluate(load_image_set(str(samples))[0], str(ref), str(tiny_dinov2))
    batches = ImageSet.batches
    monkeypatch.setattr(ImageSet, "batches", lambda self, size=256: batches(self, 5))  # 12 images: 5 + 5 + 2
    streamed = evaluate(str(samples), str(ref), str(tiny_dinov2))
    assert streamed["metrics"] == pytest.approx(whole["metrics"], rel=1e-6) and streamed["n"] == 12


@pytest.mark.parametrize("data,extractor", [("mnist", "mnist"), ("digits", "mnist")])
def test_bundled_data_ship_their_statistics(data, extractor, monkeypatch, tmp_path):
    """Each bundled data set's reference is read from gmkit/weights, not extracted: a stale file
    (data or extractor changed) fails here, not silently in a user's first run."""
    from gmkit.metrics import reference
    from gmkit.metrics.extractors import default_extractor, get_extractor

    assert default_extractor(data) == extractor
    monkeypatch.setenv("GMKIT_CACHE", str(tmp_path / "empty-cache"))
    written = []
    monkeypatch.setattr(reference, "write_stats", lambda ref, path, command=None: written.append(path))
    ref = reference.from_source(data, get_extractor(extractor), n=100)
    assert written == [] and len(ref.pool) >= 100 and ref.features.shape[1] == 128

