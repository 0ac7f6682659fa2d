"""Feature extractors by name: what ``--extractor`` accepts, and how each figure is named.

    mnist        gmkit's digit CNN (grey 28x28)                      FD-gmkit-mnist, KID-gmkit-mnist
    inception    the FID InceptionV3 with the published weights     FID, KID
    dinov2       facebook/dinov2-large through transformers          FD-dinov2, KID-dinov2
    clip         openai/clip-vit-large-patch14 through transformers  FD-clip, KID-clip; CLIP score
    PATH|org/id  any transformers vision model, its own processor    FD-<name>, KID-<name>

Hub extractors (``org/id``, ``org/id@REVISION``, and the two aliases) resolve as Hub models do
(``interop/hub.py``): a revision, a token, and the cached snapshot at once when the Hub is unreachable.

Only distances over the published Inception weights are called FID: every other figure carries the
extractor's name, so two numbers with the same name are comparable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import GmkitError, OptionError

ALIASES = {"dinov2": "facebook/dinov2-large", "clip": "openai/clip-vit-large-patch14"}
# Bundled data sets whose own extractor is the default for them.
DATA_EXTRACTOR = {"mnist": "mnist", "mnist-captions": "mnist", "digits": "mnist"}


class Extractor:
    """A frozen network that maps images (N, C, H, W) in [-1, 1] to feature rows (N, D)."""

    spec = ""  # what ``get_extractor`` was given: recorded in statistics files to rebuild it
    name = ""  # as printed: "inception", "gmkit-mnist", "dinov2", ...
    identity = ""  # what the features depend on (weights hash, Hub commit): part of every cache key
    description = ""
    rgb = True  # wants 3 channels; grey is repeated
    classifies = False  # has ``logits`` (the class histogram, --class)
    has_text_tower = False  # has ``text_features`` (the CLIP score, --prompts)
    fd_name = kid_name = ""
    batch = 64

    def to(self, device) -> "Extractor":
        return self

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            raise GmkitError("no images to extract features from")
        return torch.cat([self._features(images[i:i + self.batch]).float().cpu()
                          for i in range(0, len(images), self.batch)])

    def fit_notes(self, channels: int, size: tuple[int, int]) -> tuple[list[str], list[str]]:
        """(warnings, notes) about how well this extractor fits images of this kind."""
        notes = [f"grey images repeated to RGB for the {self.name} extractor"] if self.rgb and channels == 1 else []
        return [], notes


class DigitExtractor(Extractor):
    """gmkit's shipped MNIST CNN (``mnist.py``); also classifies, for the class histogram."""

    rgb = False
    classifies = True
    batch = 500

    def __init__(self):
        from .mnist import EXTRACTORS, load_extractor

        self.net = load_extractor("mnist")
        self.name, self.identity = "gmkit-mnist", EXTRACTORS["mnist"][1]
        self.fd_name, self.kid_name = "FD-gmkit-mnist", "KID-gmkit-mnist"
        self.description = "gmkit's MNIST digit CNN (128-d features; grey 28x28 input)"

    def _features(self, images):
        from .mnist import prepare

        return self.net(prepare(images))[1]

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        from .mnist import extract

        return extract(self.net, images)[0]

    def fit_notes(self, channels, size):
        warns = []
        if channels != 1:
            warns.append("the mnist extractor knows grey handwritten digits only: these colour images are "
                         "turned grey and its figures say little about them (use --extractor inception, dinov2 or clip)")
        return warns, []


class InceptionExtractor(Extractor):
    batch = 32

    def __init__(self, weights: str | None = None):
        from .inception import PUBLISHED_NAME, PUBLISHED_SHA256, load_inception

        self.net = load_inception(weights)
        self.name, self.identity = "inception", PUBLISHED_SHA256
        self.fd_name, self.kid_name = "FID", "KID"
        self.description = (f"InceptionV3 pool3 (2048-d), TF-ported FID weights {PUBLISHED_NAME}; 8-bit RGB resized "
                            "to 299 with TensorFlow 1 bilinear, as torch-fidelity and the original FID")

    def to(self, device):
        self.net.to(device)
        return self

    def _features(self, images):
        from .inception import preprocess

        dev = next(self.net.parameters()).device
        return self.net(preprocess(images).to(dev))


def default_extractor(reference: str) -> str:
    """The extractor a reference gets when none is named: its own (stats file, bundled digits), else inception."""
    from .reference import stats_file_extractor

    recorded = stats_file_extractor(reference)
    if recorded:
        return recorded
    return DATA_EXTRACTOR.get(reference.split(":", 1)[0] if not Path(reference).exists() else "", "inception")


def get_extractor(spec: str, weights: str | None = None, device: str | torch.device = "cpu",
                  revision: str | None = None, token: str | None = None) -> Extractor:
    """An extractor by name (``mnist``, ``inception``, ``dinov2``, ``clip``), transformers folder or Hub id
    (``org/name[@revision]``). ``revision`` / ``token``: for Hub extractors; a revision is written into
    the spec (``facebook/dinov2-large@REV``), so statistics files rebuild the same extractor."""
    spec = (spec or "").strip()
    if revision is not None:
        spec = _pinned(spec, revision)
    ext = _build(spec, weights, token)
    ext.spec = spec
    return ext.to(device)


def _pinned(spec: str, revision: str) -> str:
    """``spec`` as a Hub id at ``revision`` (an alias becomes its repo)."""
    from ..interop.hub import parse_hub_id

    hub = None if spec in ("mnist", "inception") or Path(spec).is_dir() else parse_hub_id(ALIASES.get(spec, spec), revision)
    if hub is None:
        raise OptionError("revision", f"applies to Hub extractors (org/name, dinov2, clip), not {spec!r}")
    return hub.label


def _build(spec: str, weights: str | None, token: str | None = None) -> Extractor:
    if weights and spec != "inception":
        raise OptionError("extractor_weights", f"applies to the inception extractor only, not {spec!r}")
    if spec == "mnist":
        return DigitExtractor()
    if spec == "inception":
        return InceptionExtractor(weights)
    from ..interop.hub import HUB_SOURCE

    if spec in ALIASES or Path(spec).is_dir() or HUB_SOURCE.match(spec):
        from .hf import HFExtractor

        return HFExtractor(ALIASES.get(spec, spec), name=spec if spec in ALIASES else None, token=token)
    raise OptionError("extractor", f"{spec!r} is unknown: use mnist, inception, dinov2, clip, a folder with a saved "
                                   "transformers vision model, or a Hub id such as facebook/dinov2-base")
