"""``evaluate``: the one entry to sample-quality metrics, for the CLI, ``compare`` and ``bench``.

Images are scored against a reference through a named extractor, always beside the real-vs-real
baseline (training-split images against the same held-out reference, at the same count), so a
number is read against the noise floor of its sample size and extractor.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import GmkitError, OptionError
from .distances import (density_coverage, frechet_distance_stats, gaussian_stats, kernel_inception_distance,
                        precision_recall)
from .extractors import Extractor, default_extractor, get_extractor
from .reference import Reference, load_reference

K_PR, K_DC = 3, 5  # neighbours: Kynkaanniemi et al. 2019 (precision/recall), Naeem et al. 2020 (density/coverage)


def scores(feats: np.ndarray, ref: Reference, k: int = K_PR) -> dict:
    """Every distance of one feature set to the reference (unrounded: outputs round for display)."""
    feats = np.asarray(feats, np.float64)
    kid, kid_std = kernel_inception_distance(feats, ref.features, subsets=20,
                                             subset_size=min(500, len(feats), len(ref.features)))
    precision, recall = precision_recall(ref.features, feats, k)
    density, coverage = density_coverage(ref.features, feats, K_DC)
    mu, cov = gaussian_stats(feats)
    fd = frechet_distance_stats(mu, cov, ref.mean, ref.cov, rows_a=feats - mu)
    return {"fd": fd, "kid": kid, "kid_std": kid_std,
            "precision": precision, "recall": recall, "density": density, "coverage": coverage}


def image_set(images):
    """A tensor (N, C, H, W) in [-1, 1], a path (folder of images, .safetensors tensor) or an ImageSet."""
    from ..imageio import ImageSet

    if isinstance(images, ImageSet):
        return images
    if isinstance(images, (str, os.PathLike)):
        return ImageSet(str(images))
    if not torch.is_tensor(images) or images.ndim != 4:
        raise GmkitError(f"images must be a (N, C, H, W) tensor or a path, got {getattr(images, 'shape', type(images))}")
    return ImageSet.from_tensor(images.float())


def resolve(reference: str, extractor: str | Extractor | None, weights: str | None = None,
            device: str | torch.device = "cpu", revision: str | None = None, token: str | None = None) -> Extractor:
    """The extractor to use: the one given, else the reference's own (statistics file, bundled digits), else
    inception. ``revision`` / ``token``: for a Hub extractor."""
    if isinstance(extractor, Extractor):
        return extractor
    if extractor is None and weights:  # Inception weights name their extractor
        extractor = "inception"
    return get_extractor(extractor or default_extractor(reference), weights, device, revision=revision, token=token)


def evaluate(images, reference: str | Reference = "mnist", extractor: str | Extractor | None = None, *,
             extractor_weights: str | None = None, class_label: int | None = None, prompts: list[str] | None = None,
             device: str | torch.device = "cpu", revision: str | None = None, token: str | None = None) -> dict:
    """Metrics of ``images`` (a (N, C, H, W) tensor in [-1, 1], a folder, a .safetensors tensor file) against
    ``reference`` (a data source, a statistics file or a loaded ``Reference``) through ``extractor``, beside
    the real-vs-real baseline; the result names the extractor and what each figure is called (FID only
    for the published Inception weights). Folders are read in batches, never whole. ``revision`` /
    ``token``: for a Hub extractor (``org/name``, ``dinov2``, ``clip``)."""
    source = image_set(images)
    n, (c, h, w) = source.count, source.shape
    if c not in (1, 3):
        raise GmkitError(f"images must have 1 or 3 channels, got {c}")
    if n <= K_PR:
        raise GmkitError(f"need more than {K_PR} images to score, got {n}")
    spec = reference.source if isinstance(reference, Reference) else reference
    ext = resolve(spec, extractor, extractor_weights, device, revision, token)
    classify = ext.classifies  # a classifier (mnist): how many samples read as some class, and which
    if class_label is not None and not classify:
        raise OptionError("class_label", f"needs a classifying extractor (mnist); {ext.name} does not classify")
    if prompts is not None:
        prompts = list(prompts) * n if len(prompts) == 1 else list(prompts)
        if not ext.has_text_tower:
            raise OptionError("prompts", f"the CLIP score needs a CLIP extractor (clip or a CLIP model); {ext.name} has no text tower")
        if len(prompts) != n:
            raise OptionError("prompts", f"{len(prompts)} prompts for {n} images: give one prompt, or one per image")
    ref = reference if isinstance(reference, Reference) else load_reference(reference, ext, n)
    if ref.extractor_id != ext.identity:
        raise GmkitError(f"reference {spec} was made with the {ref.extractor} extractor, not {ext.name}")
    if len(ref.features) <= K_DC:
        raise GmkitError(f"reference {spec}: {ref.description} has {len(ref.features)} images; metrics need more than {K_DC}")
    if ref.channels and c != ref.channels:
        raise GmkitError(f"the images have {c} channel(s) but reference {spec} has {ref.channels}: measure like with "
                         f"like ({'grey' if ref.channels == 1 else 'colour'} samples, or another reference)")
    warnings, notes = ext.fit_notes(c, (h, w))
    notes = source.notes + notes
    if ref.size[0] and tuple(ref.size) != (h, w):
        notes.append(f"the images are {w}x{h}, the reference {ref.size[1]}x{ref.size[0]}: both are resized "
                     "by the extractor, but a size difference alone moves the figures")
    if len(ref.features) < 100:
        notes.append(f"the reference holds {len(ref.features)} images: at that size FD is noisy and biased upward; "
                     "read it against the real-vs-real baseline")
    feats, logits = [], []
    for batch in source.batches():
        if not bool(torch.isfinite(batch).all()):
            raise GmkitError("the images hold NaN or infinite values")
        feats.append(ext.features(batch))
        if classify:
            logits.append(ext.logits(batch))
    feats = torch.cat(feats)
    base = ref.baseline(n)
    if len(base) < n:
        notes.append(f"real-vs-real baseline at n={len(base)}: the reference has only {len(base)} training-split images "
                     f"for it (the samples: {n}); FD is biased by n, compare KID")
    out = {"extractor": ext.name, "extractor_spec": ext.spec, "extractor_description": ext.description,
           "extractor_id": ext.identity, "n": n, "reference": ref.description, "reference_source": ref.source,
           "names": {"fd": ext.fd_name, "kid": ext.kid_name},
           "metrics": scores(feats.numpy(), ref),
           "baseline_real_train_vs_heldout": scores(base, ref) if len(base) > K_PR else None, "baseline_n": len(base),
           "warnings": warnings, "notes": notes}
    if classify:
        probs = torch.cat(logits).softmax(1)
        out["confident_share"] = round(float((probs.max(1).values > 0.9).float().mean()), 4)
        out["class_histogram"] = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).tolist()
        if class_label is not None:
            out["class_accuracy"] = round(float((probs.argmax(1) == class_label).float().mean()), 4)
    if prompts is not None:
        from .hf import clip_score

        out["clip_score"] = clip_score(ext, feats, prompts)  # the image embeddings are the FD features
    return out


def save_stats(source: str, path: str, extractor: str | None = None, extractor_weights: str | None = None,
               pool_size: int = 10_000, device: str | torch.device = "cpu", command: str | None = None,
               revision: str | None = None, token: str | None = None) -> Reference:
    """Write the reference statistics of ``source`` (as ``--reference`` would use them) to ``path``."""
    from .reference import from_source, write_stats

    ext = resolve(source, extractor, extractor_weights, device, revision, token)
    ref = from_source(source, ext, pool_size=pool_size)
    write_stats(ref, path, command)
    return ref

