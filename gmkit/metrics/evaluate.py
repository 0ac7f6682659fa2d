"""Score a set of images against a reference data set, always beside the real-vs-real baseline."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..data.core import cache_dir
from ..errors import GmkitError
from .distances import frechet_distance, kernel_inception_distance, precision_recall
from .extractor import EXTRACTORS, extract, load_extractor


def _reference(name: str, split: str, net) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a bundled data split, cached per extractor file hash."""
    from ..data import load_data

    tag = EXTRACTORS[name][1][:12]
    path = cache_dir() / "metrics" / f"{name}-{split}-{tag}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["feats"], f["labels"]
    data = load_data(EXTRACTORS[name][2], split)
    _, feats = extract(net, data.images)
    feats, labels = feats.double().numpy(), data.labels.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, feats=feats, labels=labels)
    tmp.replace(path)
    return feats, labels


def scores(feats: np.ndarray, ref: np.ndarray, k: int = 3) -> dict:
    kid, kid_std = kernel_inception_distance(feats, ref, subsets=20, subset_size=min(500, len(feats), len(ref)))
    precision, recall = precision_recall(ref, feats, k)
    return {"fd": round(frechet_distance(feats, ref), 4), "kid": round(kid, 6), "kid_std": round(kid_std, 6),
            "precision": round(precision, 4), "recall": round(recall, 4)}


def evaluate(images: torch.Tensor, reference: str = "mnist", class_label: int | None = None, k: int = 3) -> dict:
    """Metrics of ``images`` (N, C, H, W in [-1, 1]) against the held-out split of ``reference``,
    and the same metrics for as many real training images against it (the baseline)."""
    if reference not in EXTRACTORS:
        raise GmkitError(f"--reference {reference}: no gmkit feature extractor for it (available: {', '.join(EXTRACTORS)})")
    if len(images) <= k:
        raise GmkitError(f"need more than {k} images to score, got {len(images)}")
    if not bool(torch.isfinite(images).all()):
        raise GmkitError("the images hold NaN or infinite values")
    net = load_extractor(reference)
    ref, _ = _reference(reference, "test", net)
    train, _ = _reference(reference, "train", net)
    logits, feats = extract(net, images)
    n = len(images)
    g = np.random.default_rng(0)
    base = train[g.choice(len(train), size=min(n, len(train)), replace=False)]
    probs = logits.softmax(1)
    out = {"extractor": f"gmkit-{reference}", "extractor_sha256": EXTRACTORS[reference][1], "n": n,
           "reference": f"{reference} held-out split ({len(ref)} images)",
           "metrics": scores(feats.double().numpy(), ref, k),
           "baseline_real_train_vs_heldout": scores(base, ref, k),
           "confident_share": round(float((probs.max(1).values > 0.9).float().mean()), 4),
           "class_histogram": torch.bincount(probs.argmax(1), minlength=probs.shape[1]).tolist()}
    if class_label is not None:
        out["class_accuracy"] = round(float((probs.argmax(1) == class_label).float().mean()), 4)
    out["names"] = {"fd": f"FD-gmkit-{reference}", "kid": f"KID-gmkit-{reference}"}
    return out


def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.float().numpy().tobytes()).hexdigest()[:16]
