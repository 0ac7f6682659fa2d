"""Image folders, bundled data, checkpoints on disk, and Hub ids resolved from a local cache."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gmkit.checkpoint import load_tensors, save_model, save_tensors
from gmkit.data import load_data
from gmkit.errors import GmkitError


def _folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / "cats" / "a.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "cats" / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "RGBA").save(root / "dogs" / "c.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).convert("P").save(root / "dogs" / "d.gif")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "dogs" / "e.webp")
    (root / "dogs" / "broken.png").write_bytes(b"not an image")
    return root


def test_image_folder_converts_resizes_and_labels(tmp_path, capsys):
    data = load_data(str(_folder(tmp_path)), image_size=12)
    assert data.images().shape == (5, 3, 12, 12)
    assert float(data.images().min()) >= -1 and float(data.images().max()) <= 1
    assert data.class_names == ["cats", "dogs"] and data.labels.tolist() == [0, 0, 1, 1, 1]
    assert "broken.png" in capsys.readouterr().err


def test_image_folder_bad_file_fatal_on_request(tmp_path):
    with pytest.raises(GmkitError, match="broken.png"):
        load_data(str(_folder(tmp_path)), image_size=12, on_error="error")


def test_empty_folder_and_unknown_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GmkitError, match="no images"):
        load_data(str(tmp_path / "empty"))
    with pytest.raises(GmkitError, match="mnist"):
        load_data("no-such-data")


def test_bundled_mnist_split_is_fixed_and_disjoint():
    train, test = load_data("mnist", "train"), load_data("mnist", "test")
    assert train.images().shape == (4500, 1, 28, 28) and test.images().shape == (500, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [50] * 10
    # No held-out image appears in the training split.
    tr = {hash(x.numpy().tobytes()) for x in train.images()}
    assert sum(hash(x.numpy().tobytes()) in tr for x in test.images()) < 5  # MNIST has a few exact duplicates


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"a": torch.ones(2)}, {"k": "v"})
    with pytest.raises(Exception):
        save_tensors(path, {"a": object()}, {})  # not a tensor: the write fails mid-way
    tensors, meta = load_tensors(path)
    assert torch.equal(tensors["a"], torch.ones(2)) and meta == {"k": "v"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _fake_hub_cache(hub_dir: Path, repo: str, file_src: Path, subfolder: str = "") -> None:
    """Lay a file out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/..."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = hub_dir / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    target = base / "snapshots" / commit / subfolder / "model.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(file_src.read_bytes())


def test_hub_id_resolves_offline_from_cache(tiny_run, tmp_path, monkeypatch):
    from conftest import run_cli

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(hub, "someone/tiny-ddpm", tiny_run / "model.safetensors")
    _fake_hub_cache(hub, "someone/zoo", tiny_run / "model.safetensors", subfolder="ddpm")
    r = run_cli("sample", "someone/tiny-ddpm", "-n", "2", "--steps", "3", "--out", str(tmp_path / "a.png"))
    assert r.code == 0, r.err
    r = run_cli("sample", "someone/zoo@main/ddpm", "-n", "2", "--steps", "3", "--out", str(tmp_path / "b.png"))
    assert r.code == 0, r.err
    r = run_cli("sample", "someone/zoo", "--out", str(tmp_path / "c.png"))
    assert r.code != 0 and "someone/zoo" in r.err


def test_save_model_casts_to_fp16(tmp_path):
    save_model(tmp_path / "m.safetensors", "ddpm", {}, {"w": torch.ones(3), "i": torch.arange(3)}, dtype=torch.float16)
    tensors, meta = load_tensors(tmp_path / "m.safetensors")
    assert tensors["w"].dtype == torch.float16 and tensors["i"].dtype == torch.int64
    assert meta["gmkit.family"] == "ddpm" and "gmkit.version" in meta
