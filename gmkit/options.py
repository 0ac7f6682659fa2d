"""Typed sample and encode options, validated once, in one place.

The CLI and the Python API build a ``SampleOptions`` from what the user gave, merge it over the
defaults a model's name carries (``load("ddim")`` samples DDIM with 50 steps), and check it: value
ranges and finiteness (``check``), which family takes what (``check_for``, from the family's
declared ``sample_options``), and which options need or exclude each other. Families then receive
the options as keyword arguments (``as_kwargs``). Every error is an ``OptionError`` naming the
*setting* (``class_label``); the CLI prints the matching flag (``--class``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import OptionError

# Work bounds (README "Errors and safety"): no option can make one call run unbounded or exhaust
# memory. Samplers build per-step tables, so steps are capped far above any useful count (DDPM's
# 1000 x 100); image counts are capped and written batch by batch; seeds must fit torch's 64-bit
# generators for every image (image i draws from seed + i).
MAX_STEPS = 100_000
MAX_IMAGES = 1_000_000
MAX_BATCH = 4096
MAX_SEED = 2**63 - 1
MAX_RESAMPLE = 1000
MAX_REFINE = 100
MAX_BATCH_VALUES = 1 << 25  # image values generated at once (64 RGB images of 416x416): activations scale with it


def fit_batch(batch_size: int, image_shape) -> int:
    """``batch_size``, lowered so one batch of images of ``image_shape`` stays within MAX_BATCH_VALUES
    (image i still comes from seed S+i, so the images do not change)."""
    values = 1
    for d in image_shape:
        values *= int(d)
    return max(1, min(batch_size, MAX_BATCH_VALUES // max(values, 1)))


def _finite(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise OptionError(name, f"must be a finite number, got {v!r}")
    return float(v)


def _whole(name: str, v, low: int, high: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise OptionError(name, f"must be a whole number, got {v!r}")
    if v < low:
        raise OptionError(name, f"must be >= {low}, got {v}")
    if high is not None and v > high:
        raise OptionError(name, f"must be <= {high:,}, got {v:,}")
    return v


def check_run(n: int | None = None, seed: int | None = None, batch_size: int | None = None) -> None:
    """How much one call makes: image count, first seed (image i uses seed + i) and batch size."""
    if n is not None:
        _whole("n", n, 1, MAX_IMAGES)
    if batch_size is not None:
        _whole("batch_size", batch_size, 1, MAX_BATCH)
    if seed is not None:
        _whole("seed", seed, 0, MAX_SEED - (n or 1) + 1)


@dataclass(frozen=True)
class SampleOptions:
    """Everything a ``sample`` call can be told besides how many images and which seeds.

    None means "not given": the model's defaults, then the family's, apply.
    """

    sampler: str | None = None  # ddpm, ddim, dpm++2m, pc, heun, ... (the family's samplers)
    steps: int | None = None  # sampler steps (>= 1)
    eta: float | None = None  # ddim / euler-ancestral noise, 0 (deterministic) .. 1 (DDPM-like)
    schedule: str | None = None  # noise levels: discrete (the model's own), karras, exponential (= geometric)
    snr: float | None = None  # pc sampler: signal-to-noise ratio of the corrector (> 0)
    class_label: int | None = None  # class-conditional models: the class (>= 0)
    guidance: float | None = None  # classifier-free guidance scale (>= 0)
    truncation: float | None = None  # GAN truncation trick (> 0)
    temperature: float | None = None  # flow / VAE latent temperature; vqgpt softmax temperature, 0 = greedy (>= 0)
    top_k: int | None = None  # vqgpt: draw each token from the k most likely (0 = all)
    top_p: float | None = None  # vqgpt: nucleus sampling, the most likely tokens holding mass p (0 < p <= 1)
    prompt: str | list[str] | None = None  # text-to-image: one prompt, or one per image
    negative_prompt: str | None = None
    init: Any = None  # starting noise (N, *sample_shape) tensor
    image: Any = None  # img2img / inpainting / upsampling input (1 or N, C, H, W) in [-1, 1]
    mask: Any = None  # inpainting: (1, 1, H, W), 1 = generate
    strength: float | None = None  # img2img: 0 (returns the image) .. 1 (ignores it)
    resample: int | None = None  # inpainting: RePaint resamplings per jump (>= 1)
    jump: int | None = None  # inpainting: RePaint jump length (>= 1)
    direction: str | None = None  # cyclegan: translate image a2b or b2a
    height: int | None = None  # text-to-image: image height in pixels (a multiple of 8; the family checks its own factor)
    width: int | None = None  # text-to-image: image width in pixels

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> "SampleOptions":
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise OptionError(unknown[0], f"is not a sample option (known: {', '.join(cls.names())})")
        return cls(**options)

    def given(self) -> dict[str, Any]:
        """The options that were set (not None)."""
        # Not dataclasses.asdict: it would deep-copy the tensors.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def over(self, defaults: dict[str, Any]) -> "SampleOptions":
        """These options over a model's defaults (what its name implies, e.g. ddim: 50 DDIM steps)."""
        return dataclasses.replace(SampleOptions.from_dict(defaults), **self.given())

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments a family's ``sample`` receives: the given options only."""
        return self.given()

    def check(self) -> "SampleOptions":
        """Ranges, finite values and combinations; returns self."""
        for name, high in (("steps", MAX_STEPS), ("resample", MAX_RESAMPLE), ("jump", MAX_STEPS), ("height", 4096),
                           ("width", 4096)):
            if getattr(self, name) is not None:
                _whole(name, getattr(self, name), 1, high)
        if self.class_label is not None:
            _whole("class_label", self.class_label, 0)
        if self.top_k is not None:
            _whole("top_k", self.top_k, 0)
        if self.top_p is not None and not 0 < _finite("top_p", self.top_p) <= 1:
            raise OptionError("top_p", f"must be in (0, 1] (1 = no limit), got {self.top_p}")
        ranges = {"eta": (0, 1), "strength": (0, 1)}
        for name, (low, high) in ranges.items():
            v = getattr(self, name)
            if v is not None and not low <= _finite(name, v) <= high:
                raise OptionError(name, f"must be between {low} and {high}, got {v}")
        for name, positive in (("guidance", False), ("temperature", False), ("truncation", True), ("snr", True)):
            v = getattr(self, name)
            if v is not None and (_finite(name, v) <= 0 if positive else _finite(name, v) < 0):
                raise OptionError(name, f"must be {'> 0' if positive else '>= 0'}, got {v}")
        if self.direction is not None and self.direction not in ("a2b", "b2a"):
            raise OptionError("direction", f"must be a2b or b2a, got {self.direction!r}")
        for name in ("sampler", "schedule", "negative_prompt"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise OptionError(name, f"must be a string, got {v!r}")
        if self.prompt is not None and not (isinstance(self.prompt, str) or
                                            isinstance(self.prompt, (list, tuple)) and all(isinstance(p, str) for p in self.prompt)):
            raise OptionError("prompt", "must be a string or a list of strings")
        if self.image is None:
            for name in ("mask", "strength", "resample", "jump"):
                if getattr(self, name) is not None:
                    raise OptionError(name, f"{{{name}}} edits an image: add {{image}}")
        if (self.resample is not None or self.jump is not None) and self.mask is None:
            raise OptionError("resample" if self.resample is not None else "jump",
                              "{resample} and {jump} apply to inpainting: add {mask}")
        if self.init is not None and self.image is not None:
            raise OptionError("init", "{init} and {image} both give the starting point; use one")
        if self.eta is not None and self.sampler is not None:
            from .diffusion.samplers import SAMPLERS  # the samplers' facts (imports torch: only when eta is given)

            if self.sampler in SAMPLERS and "eta" not in SAMPLERS[self.sampler].params:
                takers = " and ".join(k for k, v in SAMPLERS.items() if "eta" in v.params)
                raise OptionError("eta", f"{{eta}} applies to the {takers} samplers, not {self.sampler} (give {{sampler}} ddim)")
        return self

    def check_for(self, family) -> "SampleOptions":
        """Refuse options this model's family does not take (declared in its ``sample_options``)."""
        family.check_options(self.given())
        if self.class_label is not None and family.num_classes and self.class_label >= family.num_classes:
            raise OptionError("class_label", f"must be between 0 and {family.num_classes - 1}, got {self.class_label}")
        return self


@dataclass(frozen=True)
class EncodeOptions:
    """What an ``encode`` call can be told: inversion steps, class, refinement, and the encoder."""

    steps: int | None = None  # diffusion / score models: inversion or ODE steps (>= 1)
    class_label: int | None = None  # class-conditional models
    refine: int | None = None  # DDIM inversion: fixed-point iterations per step (>= 0)
    sampler: str | None = None  # diffusion / score models: ddim (inversion) or ode

    def check(self) -> "EncodeOptions":
        if self.steps is not None:
            _whole("steps", self.steps, 1, MAX_STEPS)
        if self.refine is not None:
            _whole("refine", self.refine, 0, MAX_REFINE)
        if self.class_label is not None:
            _whole("class_label", self.class_label, 0)
        return self

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
