"""Hugging Face datasets: a Hub id (from the local cache when offline) or a ``save_to_disk`` folder.

Columns are found by their features (the first ``Image`` column, a ``ClassLabel`` column, a text
column named text/caption/prompt) or named with ``columns={"image": ..., "label": ..., "caption":
..., "source": ...}``; every named column other than label and caption is an image column (paired
data). Images are read as their encoded bytes and decoded by gmkit's decode workers.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import GmkitError
from ..names import HUB_ID
from .cache import Plan
from .streams import StreamSource

LABEL_NAMES = ("label", "labels", "fine_label", "class", "target")
CAPTION_NAMES = ("text", "caption", "captions", "prompt", "sentence")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise GmkitError("Hugging Face data needs the datasets package (pip install 'gmkit[data]')") from None
    datasets.disable_progress_bars()  # gmkit reports its own progress
    return datasets


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def looks_like_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not Path(spec).exists()


def open_dataset(spec: str, split: str, config: str | None, streaming: bool):
    """The split of a saved folder or Hub dataset; one clear line when it, or the split, is missing."""
    datasets = _datasets()
    path = Path(spec)
    if is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise GmkitError(f"{spec}: no split {split!r} (it has: {', '.join(ds)})")
            ds = ds[split]
        elif split not in ("train", "all"):
            raise GmkitError(f"{spec}: no split {split!r} (a single data set without splits: use train)")
        return ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds) // 256))) if streaming else ds
    try:
        with _offline_unless_reachable(datasets, spec):
            return datasets.load_dataset(spec, config, split=split, streaming=streaming)
    except ConnectionError:
        raise GmkitError(f"{spec}: Hugging Face dataset not in the local cache and the Hub cannot be reached "
                         "(offline); load it once with network, or give a save_to_disk folder") from None
    except ValueError as e:
        if "split" in str(e).lower():
            raise GmkitError(f"{spec}: no split {split!r} ({str(e).splitlines()[0]})") from None
        raise GmkitError(f"{spec}: {str(e).splitlines()[0]}") from None
    except FileNotFoundError as e:
        raise GmkitError(f"{spec}: Hugging Face dataset not found ({str(e).splitlines()[0]})") from None
    except Exception as e:  # datasets raises many kinds (DatasetNotFoundError, HfHubHTTPError, ...)
        raise GmkitError(f"{spec}: cannot load the Hugging Face dataset ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


@contextmanager
def _offline_unless_reachable(datasets, spec: str):
    """Without a reachable Hub, ``load_dataset`` retries for about half a minute and prints each retry;
    one quick listing call (the model loader's probe and timeout) decides, and an unreachable Hub means
    the local cache only, at once, as with ``HF_HUB_OFFLINE=1``."""
    from ..interop.hub import hub_env, listing_timeout, network_error

    offline, _ = hub_env()
    if not offline:
        try:
            from huggingface_hub import HfApi

            HfApi().dataset_info(spec, timeout=listing_timeout())
        except Exception as e:  # noqa: BLE001 - only "no network" changes the mode; the rest is load_dataset's to report
            offline = network_error(e) is not None
    if not offline or datasets.config.HF_HUB_OFFLINE:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def pick_columns(ds, spec: str, wanted: dict[str, str]) -> dict[str, str]:
    """{gmkit column: dataset column}: ``wanted`` checked against the features, the rest found by type."""
    datasets = _datasets()
    feats = ds.features or {}
    names = list(feats)
    for key, col in wanted.items():
        if col not in feats:
            raise GmkitError(f"{spec}: no column {col!r} for {key} (columns: {', '.join(names)})")
    images = [n for n in names if isinstance(feats[n], datasets.Image)]
    out = dict(wanted)
    if "image" not in out:
        if not images:
            raise GmkitError(f"{spec}: no image column (columns: {', '.join(names)}); name one with image column")
        out["image"] = "image" if "image" in images else ("img" if "img" in images else images[0])
    if "label" not in out:
        labels = [n for n in names if isinstance(feats[n], datasets.ClassLabel)]
        labels = [n for n in LABEL_NAMES if n in labels] or labels
        if labels:
            out["label"] = labels[0]
    if "caption" not in out:
        texts = [n for n in CAPTION_NAMES if n in feats]
        if texts:
            out["caption"] = texts[0]
    for key, col in out.items():
        if key not in ("label", "caption") and not isinstance(feats[col], datasets.Image):
            raise GmkitError(f"{spec}: column {col!r} holds {type(feats[col]).__name__} values, not images")
    return out


def _class_names(ds, col: str | None, labels: np.ndarray | None) -> list[str] | None:
    if col is None:
        return None
    feat = (ds.features or {}).get(col)
    names = getattr(feat, "names", None)
    if names:
        return list(names)
    return [str(i) for i in range(int(labels.max()) + 1)] if labels is not None and len(labels) else None


def _raw(ds, image_cols: list[str]):
    datasets = _datasets()
    for c in image_cols:
        ds = ds.cast_column(c, datasets.Image(decode=False))  # encoded bytes: decoding is the workers' job
    return ds


def _captions(values: list) -> list[list[str]]:
    return [[v] if isinstance(v, str) else [str(t) for t in v] for v in values]


def hf_plan(spec: str, split: str, config: str | None, wanted: dict[str, str]) -> Plan:
    ds = open_dataset(spec, split, config, streaming=False)
    cols = pick_columns(ds, spec, wanted)
    image_keys = [k for k in cols if k not in ("label", "caption")]
    labels = np.asarray(ds[cols["label"]], np.int64) if "label" in cols else None
    if labels is not None and (labels < 0).any():
        raise GmkitError(f"{spec}: column {cols['label']!r} has missing labels (-1)")
    captions = _captions(ds[cols["caption"]]) if "caption" in cols else None
    raw = _raw(ds.select_columns([cols[k] for k in image_keys]), [cols[k] for k in image_keys])
    files = [[f.get("filename"), Path(f["filename"]).stat().st_size] for f in ds.cache_files if Path(f["filename"]).exists()]
    key = hashlib.sha256(json.dumps([spec if not Path(spec).exists() else str(Path(spec).resolve()), split, config,
                                     cols, getattr(ds, "_fingerprint", None), files]).encode()).hexdigest()

    def fetch(start: int, stop: int) -> list[dict]:
        rows = raw[start:stop]
        return [{k: rows[cols[k]][i] for k in image_keys} for i in range(stop - start)]

    return Plan(name=Path(spec).name or spec, note=f"Hugging Face dataset {spec} ({split})", key=key, n=len(ds),
                fetch=fetch, describe=lambda i: f"{spec} {split} row {i}", image_columns=tuple(image_keys),
                labels=labels, class_names=_class_names(ds, cols.get("label"), labels), captions=captions,
                extra={"source": spec, "split": split, "columns": cols})


class _HFShards:
    """Picklable shard opener: each process reopens the stream (workers must not share one)."""

    def __init__(self, spec: str, split: str, config: str | None, cols: dict[str, str]):
        self.spec, self.split, self.config, self.cols = spec, split, config, cols
        self._ds = None

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}

    def __call__(self, i: int):
        if self._ds is None:
            ds = open_dataset(self.spec, self.split, self.config, streaming=True)
            self._ds = _raw(ds, [v for k, v in self.cols.items() if k not in ("label", "caption")])
        for row_no, row in enumerate(self._ds.shard(num_shards=self._ds.n_shards, index=i)):
            ex = {k: row[v] for k, v in self.cols.items() if k not in ("label", "caption")}
            if "label" in self.cols:
                ex["label"] = row[self.cols["label"]]
            if "caption" in self.cols:
                ex["caption"] = _captions([row[self.cols["caption"]]])[0]
            ex["__key__"] = f"{self.spec} {self.split} shard {i} row {row_no}"
            yield ex


def _describe(_: int, ex: dict) -> str:
    return str(ex.get("__key__", "an example"))


def hf_stream(spec: str, split: str, config: str | None, wanted: dict[str, str]) -> StreamSource:
    ds = open_dataset(spec, split, config, streaming=True)
    cols = pick_columns(ds, spec, wanted)
    info = getattr(ds, "info", None)
    count = None
    if info is not None and info.splits and split in info.splits:
        count = info.splits[split].num_examples or None
    image_keys = tuple(k for k in cols if k not in ("label", "caption"))
    return StreamSource(Path(spec).name or spec, f"Hugging Face dataset {spec} ({split}, streamed)", ds.n_shards,
                        _HFShards(spec, split, config, cols), _describe, image_keys,
                        _class_names(ds, cols.get("label"), None), count)
