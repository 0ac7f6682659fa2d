"""The data layer: every source kind on small data made here, the uint8 cache, splits, bad images."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gmkit.data import load_data
from gmkit.errors import GmkitError

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, seed: int, size=(10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def _hf_dict(n: int = 12, seed: int = 0):
    from datasets import ClassLabel, Dataset, Features, Image as HFImage, Value

    rng = np.random.default_rng(seed)
    imgs = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(n)]
    feats = Features({"img": HFImage(), "source": HFImage(), "label": ClassLabel(names=["a", "b", "c"]),
                      "text": Value("string")})
    return Dataset.from_dict({"img": imgs, "source": imgs, "label": [i % 3 for i in range(n)],
                              "text": [f"picture {i}" for i in range(n)]}, features=feats)


def _saved_hf(tmp_path: Path) -> Path:
    from datasets import DatasetDict

    root = tmp_path / "hfdata"
    DatasetDict({"train": _hf_dict(12), "test": _hf_dict(4, seed=1)}).save_to_disk(str(root))
    return root


def _tar_shards(tmp_path: Path, shards: int = 3, per: int = 5) -> Path:
    root = tmp_path / "shards"
    root.mkdir()
    rng = np.random.default_rng(0)
    for s in range(shards):
        with tarfile.open(root / f"part-{s:03d}.tar", "w") as tf:
            for i in range(per):
                key = f"{s:03d}{i:03d}"
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
                for name, payload in ((f"{key}.png", buf.getvalue()), (f"{key}.cls", str(i % 2).encode()),
                                      (f"{key}.txt", f"example {key}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return root


# -- folders ------------------------------------------------------------------------------------

def test_cache_is_uint8_on_disk_and_reads_back_exactly(tmp_path):
    _png(tmp_path / "f" / "a.png", 0, (8, 8))
    _png(tmp_path / "f" / "b.png", 1, (8, 8))
    data = load_data(str(tmp_path / "f"))
    assert data.image_shape == (3, 8, 8) and data.labels is None and data.build_seconds is not None
    assert (data.path / "image.u8").stat().st_size == 2 * 3 * 8 * 8  # one byte per pixel value
    raw = np.asarray(Image.open(tmp_path / "f" / "b.png")).transpose(2, 0, 1)
    assert torch.equal(data[1]["image"], torch.from_numpy(raw.copy()))
    batch = data.__getitems__([1, 0, 1])
    assert batch["image"].dtype == torch.uint8 and batch["index"].tolist() == [1, 0, 1]
    assert torch.equal(data.images(2)[1], torch.from_numpy(raw.copy()).float() / 127.5 - 1)


def test_split_folders_are_splits_never_classes(tmp_path):
    root = tmp_path / "photos"
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", hash((split, cls, i)) % 1000)
    (root / "test" / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f"{c}/{i}.png", "text": f"a {c}"})
                                                            for c in ("cat", "dog") for i in range(2)))
    train, test = load_data(str(root)), load_data(str(root), "test")
    assert (len(train), len(test)) == (6, 4)
    assert train.class_names == ["cat", "dog"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert test.captions == [["a cat"], ["a cat"], ["a dog"], ["a dog"]] and train.captions is None
    assert len(load_data(f"{root}:test")) == 4  # FOLDER:SPLIT
    with pytest.raises(GmkitError, match=r"no split 'validation' \(its split folders: test, train\)"):
        load_data(str(root), "validation")


def test_cache_follows_files_added_changed_removed(tmp_path):
    root = tmp_path / "f"
    for i in range(3):
        _png(root / f"{i}.png", i)
    first = load_data(str(root))
    assert load_data(str(root)).path == first.path  # unchanged: a cache hit
    _png(root / "3.png", 3)
    added = load_data(str(root))
    assert len(added) == 4 and added.path != first.path
    _png(root / "0.png", 99, (10, 12))  # changed content (and size)
    changed = load_data(str(root))
    assert changed.path not in (first.path, added.path) and not torch.equal(changed[0]["image"], added[0]["image"])
    (root / "1.png").unlink()
    assert len(load_data(str(root))) == 3


def test_two_processes_build_one_cache(tmp_path):
    root = tmp_path / "f"
    for i in range(40):
        _png(root / f"{i:02d}.png", i, (16, 16))
    code = ("import json, sys; from pathlib import Path\n"
            "from gmkit.data.cache import ensure; from gmkit.data.folders import folder_plan\n"
            f"path, secs = ensure(folder_plan(Path({str(root)!r}), 'train'), None, 8, 3, False, 'skip', 0, False)\n"
            "print(json.dumps([str(path), secs]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "GMKIT_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert results[0][0] == results[1][0]
    assert sum(secs is not None for _, secs in results) == 1  # one built, the other found it built
    cache = Path(results[0][0])
    assert (cache / "image.u8").stat().st_size == 40 * 3 * 8 * 8
    assert not [p for p in cache.parent.iterdir() if ".tmp-" in p.name]


def test_workers_decode_in_parallel_the_same_bytes(tmp_path, monkeypatch):
    root = tmp_path / "f"
    for i in range(12):
        _png(root / f"{i:02d}.png", i, (9, 11))
    alone = load_data(str(root), workers=0)
    from gmkit.data import cache

    monkeypatch.setattr(cache, "POOL_MIN", 1)
    monkeypatch.setattr(cache, "CHUNK", 5)
    monkeypatch.setenv("GMKIT_CACHE", str(tmp_path / "other-cache"))
    pooled = load_data(str(root), workers=2)
    assert pooled.path != alone.path and (pooled.path / "image.u8").read_bytes() == (alone.path / "image.u8").read_bytes()


# -- bad data -----------------------------------------------------------------------------------

def _bad_folder(tmp_path: Path) -> Path:
    root = tmp_path / "odd"
    root.mkdir()
    grad = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(grad.astype(np.uint16)).save(root / "deep16.png")  # 16-bit grey
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.new("RGB", (8, 8), (0, 0, 255)).convert("P").save(root / "palette.gif")
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    _png(root / "big.png", 0, (40, 40))
    full = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(full, "PNG")
    (root / "truncated.png").write_bytes(full.getvalue()[:60])
    (root / "notes.png").write_bytes(b"not an image at all")
    return root


def test_odd_images_are_converted_and_bad_ones_named(tmp_path, monkeypatch, capsys):
    from gmkit import image_read

    monkeypatch.setattr(image_read, "MAX_PIXELS", 1000)  # big.png (1,600 pixels) now counts as a decompression bomb
    root = _bad_folder(tmp_path)
    data = load_data(str(root), image_size=8, channels=3)
    err = capsys.readouterr().err
    for name in ("big.png", "truncated.png", "notes.png"):
        assert name in err
    assert "decompression bomb" in err and "16-bit" in err and "CMYK" in err and "animated" in err
    assert len(data) == 4  # animated, cmyk, deep16, palette: sorted by name
    x = data.__getitems__([0, 1, 2, 3])["image"]
    assert x[0, 0].float().mean() > 200  # the first frame (red) of the animation
    assert x[2].min() == 0 and x[2].max() > 200  # 16-bit values scaled, not clipped to white
    assert x[3, 2].float().mean() > 200 and x[3, 0].float().mean() < 20  # palette blue stays blue
    with pytest.raises(GmkitError, match="notes.png|truncated.png|big.png"):
        load_data(str(root), image_size=8, channels=3, on_error="error", workers=0, stream=False, random_flip=True)


def test_empty_sources_and_bad_options_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GmkitError, match="no images"):
        load_data(str(tmp_path / "empty"))
    with pytest.raises(GmkitError, match="on_bad_image"):
        load_data("digits", on_error="ignore")
    with pytest.raises(GmkitError, match="stream"):
        load_data("digits", stream=True)
    with pytest.raises(GmkitError, match="no split 'nope'"):
        load_data("mnist:nope")


# -- Hugging Face datasets ----------------------------------------------------------------------

def test_saved_hf_dataset_columns_splits_and_errors(tmp_path):
    root = _saved_hf(tmp_path)
    data = load_data(str(root), columns={"image": "img"})
    assert len(data) == 12 and data.image_shape == (3, 12, 12)
    assert data.class_names == ["a", "b", "c"] and data.labels.tolist()[:4] == [0, 1, 2, 0]
    assert data.captions[5] == ["picture 5"]
    assert len(load_data(f"{root}:test")) == 4
    paired = load_data(str(root), columns={"image": "img", "source": "source"})
    assert paired.image_columns == ("image", "source")
    b = paired.__getitems__([3])
    assert torch.equal(b["image"], b["source"])
    with pytest.raises(GmkitError, match=r"no split 'validation' \(it has: train, test\)"):
        load_data(str(root), "validation")
    with pytest.raises(GmkitError, match=r"no column 'photo' for image \(columns: img, source, label, text\)"):
        load_data(str(root), columns={"image": "photo"})
    with pytest.raises(GmkitError, match="holds Value values, not images"):
        load_data(str(root), columns={"image": "text"})


def test_hub_dataset_missing_offline_is_one_line():
    with pytest.raises(GmkitError, match="someorg/not-here: Hugging Face dataset not in the local cache"):
        load_data("someorg/not-here")


def test_unreachable_hub_means_the_cache_at_once_without_the_offline_flag(monkeypatch):
    """No HF_HUB_OFFLINE and no network: one quick probe, then load_dataset in offline mode (no
    half-minute of printed retries), and the mode is restored afterwards."""
    import datasets
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    seen = []

    def unreachable(self, repo_id, **kw):
        seen.append(("probe", repo_id, kw.get("timeout")))
        raise ConnectionError("[Errno -2] Name or service not known")

    def fake_load(path, name=None, split=None, streaming=False):
        seen.append(("load", datasets.config.HF_HUB_OFFLINE))
        raise ConnectionError("offline and not cached")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(GmkitError, match="someorg/pics: Hugging Face dataset not in the local cache"):
        load_data("someorg/pics")
    assert seen[0][:2] == ("probe", "someorg/pics") and seen[0][2] is not None and seen[1] == ("load", True)
    assert datasets.config.HF_HUB_OFFLINE is False


def test_hub_id_goes_through_datasets_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return _hf_dict(6)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_data("hf:someorg/pics", "train")
    assert calls[0] == ("someorg/pics", None, "train", False)
    assert len(data) == 6 and data.note.startswith("Hugging Face dataset someorg/pics")


# -- tar shards and streams ---------------------------------------------------------------------

def test_tar_shards_cached_and_streamed_hold_the_same_examples(tmp_path):
    root = _tar_shards(tmp_path)
    cached = load_data(str(root))
    assert len(cached) == 15 and cached.labels.tolist()[:4] == [0, 1, 0, 1] and cached.captions[0] == ["example 000000"]
    streamed = load_data(str(root), stream=True)
    assert streamed.streamed and streamed.image_shape == (3, 8, 8)
    assert torch.equal(streamed.images(15), cached.images())  # one pass in the shards' own order


def test_stream_substreams_split_every_epoch_between_ranks(tmp_path):
    data = load_data(str(_tar_shards(tmp_path, shards=3, per=4)), stream=True)
    whole = [ex for ex, *_ in _take(data.substream(0, 1, seed=3), 12)]
    # Two ranks: each reads whole shards of the epoch's seeded shard order (one 8, the other 4 examples).
    parts = [[ex for ex, epoch, _ in _take(data.substream(u, 2, seed=3), 12) if epoch == 0] for u in range(2)]
    key = lambda ex: ex["image"].numpy().tobytes()  # noqa: E731
    assert sorted(map(key, whole)) == sorted(map(key, parts[0] + parts[1]))  # together: the epoch, once
    assert not set(map(key, parts[0])) & set(map(key, parts[1])) and parts[0] and parts[1]  # disjoint
    again = [ex for ex, *_ in _take(data.substream(0, 1, seed=3), 12)]
    assert [key(e) for e in again] == [key(e) for e in whole]  # the order is the seed's
    other = [key(ex) for ex, *_ in _take(data.substream(0, 1, seed=4), 12)]
    assert other != [key(e) for e in whole]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_hf_stream_resumes_where_the_position_says(tmp_path):
    data = load_data(str(_saved_hf(tmp_path)), stream=True, columns={"image": "img"})
    full = _take(data.substream(0, 1, seed=1), 20)  # crosses into the second epoch
    epoch, pos = full[13][1], full[13][2]
    resumed = _take(data.substream(0, 1, seed=1, epoch=epoch, skip=pos), 6)
    assert all(torch.equal(a[0]["image"], b[0]["image"]) for a, b in zip(full[14:], resumed))
    assert full[0][0]["label"].dtype == torch.int64


# -- loader -------------------------------------------------------------------------------------

def test_ranks_read_disjoint_halves_of_each_global_batch():
    from gmkit.data.loader import StepBatches, batch_indices

    one = StepBatches(50, 8, seed=5, start_step=0, rank=0, world=1)
    halves = [StepBatches(50, 8, seed=5, start_step=0, rank=r, world=2) for r in range(2)]
    for step, (a, b, c) in enumerate(zip(iter(one), iter(halves[0]), iter(halves[1]))):
        assert a == b + c and not set(b) & set(c)
        assert a == batch_indices(50, 8, 5, step).tolist()
        if step == 14:  # past two epochs
            break
    later = StepBatches(50, 8, seed=5, start_step=9, rank=1, world=2)
    assert next(iter(later)) == batch_indices(50, 8, 5, 9)[4:].tolist()


def test_flips_and_crops_hit_aligned_columns_alike(tmp_path):
    from gmkit.data.loader import augment_params, to_device

    data = load_data(str(_saved_hf(tmp_path)), columns={"image": "img", "source": "source"}, image_size=8,
                     random_flip=True, random_crop=True)
    assert data.stored == 9 and data.image_shape == (3, 8, 8)
    raw = data.__getitems__(list(range(12)))
    params = augment_params(data, 12, seed=0, step=3)
    assert params["flip"].any() and not params["flip"].all() and params["crop"].max() <= 1
    b = to_device(raw, data, torch.device("cpu"), params)
    assert b["image"].shape == (12, 3, 8, 8) and torch.equal(b["image"], b["source"])
    plain = to_device(raw, data, torch.device("cpu"), {})
    assert not torch.equal(b["image"], plain["image"])
    assert torch.equal(augment_params(data, 12, 0, 3)["crop"], params["crop"])  # from (seed, step) alone


def test_a_plan_carries_named_image_columns_with_their_own_channels(tmp_path):
    from gmkit.data import DataOptions, Plan, from_plan

    for i in range(3):
        _png(tmp_path / "line" / f"{i}.png", i, (8, 8), "L")  # grey inputs
        _png(tmp_path / "colour" / f"{i}.png", 10 + i, (8, 8))  # colour targets
    pairs = [(str(tmp_path / "line" / f"{i}.png"), str(tmp_path / "colour" / f"{i}.png")) for i in range(3)]
    plan = Plan(name="pairs", note="test pairs", key="pairs-v1", n=3, image_columns=("image", "source"),
                fetch=lambda a, b: [{"image": t, "source": s} for s, t in pairs[a:b]], describe=lambda i: pairs[i][1])
    data = from_plan(plan, DataOptions())
    assert data.shapes == {"image": (3, 8, 8), "source": (1, 8, 8)}
    b = data.__getitems__([2])
    assert b["source"].shape == (1, 1, 8, 8) and b["image"].shape == (1, 3, 8, 8)
    assert torch.equal(b["source"][0, 0], torch.from_numpy(np.array(Image.open(pairs[2][0]))))
