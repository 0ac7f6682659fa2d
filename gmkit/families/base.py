"""The declared contract every generative family implements, so one CLI, one Python API and one
training loop serve all.

A family is an ``nn.Module`` built from a config dataclass. Everything a command, ``compare``,
``bench`` or the training setup asks of a family is declared here, with its signature, docstring
and default: class attributes say what the family is and can do (``capabilities``,
``sample_options``, ``latent_key``, ``default_sampler`` ...), methods do it. Nothing outside the
families looks a hook up by name, so a family that forgets one gets the documented default, and
the CLI can refuse politely ("flow models do not take --prompt") instead of crashing.

Training goes through ``forward(batch) -> {"loss": ..., other logged scalars}``, so the loop (and
DDP) can call the module itself; families that need more than one optimizer (GANs) override
``optimizers`` and ``train_step``. What a fresh run needs before the loop (a config fitted to the
data, an LDM's first stage) is ``fit_config`` / ``build_for_training``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import GmkitError, OptionError

# Capability names the CLI and the API check before calling into a family.
SAMPLE, ENCODE, DECODE, LIKELIHOOD, CLASS_COND, STEPS = "sample", "encode", "decode", "likelihood", "class", "steps"


@dataclass(frozen=True)
class DataInfo:
    """What fitting a config needs to know about the training data (decoupled from how it is stored)."""

    name: str
    channels: int
    size: int
    num_classes: int = 0
    captioned: bool = False

    @classmethod
    def of(cls, data) -> "DataInfo":
        """From a loaded data set (``gmkit.data.ImageData``); refuses non-square images."""
        c, h, w = data.image_shape
        if h != w:
            raise OptionError("image_size", f"training images must be square, got {h}x{w}; give {{image_size}}")
        return cls(data.name, int(c), int(h), int(data.num_classes), data.captioned)


@dataclass(frozen=True)
class TrainOption:
    """A training option only some families take (sr's ``scale``, score's ``sde``, ldm's ``autoencoder``)."""

    help: str
    type: type = str
    choices: tuple = ()
    minimum: float | None = None
    config_key: str | None = None  # set into the family config; None: read by ``build_for_training``
    applies_to: str = ""  # who takes it, for the refusal of other families (default: their names)

    def check(self, name: str, value: Any) -> Any:
        if not isinstance(value, self.type) or isinstance(value, bool) and self.type is not bool:
            raise OptionError(name, f"must be a {self.type.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise OptionError(name, f"must be {' or '.join(map(str, self.choices))}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise OptionError(name, f"must be >= {self.minimum:g}, got {value}")
        return value


@dataclass
class TrainSetup:
    """Where and how a fresh run is set up: what ``build_for_training`` may need beside config and data."""

    out: Path
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data_spec: str = ""
    conditional: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # the family's ``train_options`` given
    quiet: bool = False
    revision: str | None = None  # of a Hub model source among the options (the first stage)
    token: str | None = field(default=None, repr=False)  # for Hub model sources; never recorded


@dataclass(frozen=True)
class SamplingPlan:
    """What a sample call with some options will run: the sampler, its steps and network calls per image."""

    sampler: str | None  # None for one-pass families
    steps: int | None
    network_calls: int


def fit_unet(unet, data: DataInfo, num_classes: int):
    """A UNet config (``nn.unet.UNetConfig``) fitted to the data: channels in and out, resolution, classes."""
    return dataclasses.replace(unet, in_channels=data.channels, out_channels=data.channels, sample_size=data.size,
                               num_classes=num_classes)


class Family(nn.Module):
    # -- what the family is ---------------------------------------------------------------------
    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE})
    # Sample-time options this family understands, beyond n / seed / batch size (names of
    # ``gmkit.options.SampleOptions`` fields).
    sample_options: ClassVar[frozenset[str]] = frozenset()
    # Options for the quick sample grid written at each training checkpoint.
    preview_options: ClassVar[dict] = {}
    # The tensor of ``encode``'s output that ``decode`` reads back (None: the family does not decode latents).
    latent_key: ClassVar[str | None] = None
    # Step-based families: the sampler used when neither the options nor the model's name pick one,
    # and the one compare sweeps over step counts with.
    default_sampler: ClassVar[str | None] = None
    sweep_sampler: ClassVar[str] = "ddim"
    # Likelihood: the ODE steps of bits/dim (None: computed directly, no steps), the held-out images
    # compare evaluates at most (None: as many as asked; ODE likelihoods are costly), and why a
    # family without the capability has none (shown as the n/a reason).
    likelihood_steps: ClassVar[int | None] = None
    compare_likelihood_images: ClassVar[int | None] = None
    no_likelihood: ClassVar[str] = ""
    # Bounds on config values (dotted or field name -> (min, max)) beyond ``config.CONFIG_BOUNDS``,
    # checked before a config read from a checkpoint, a file or ``--set`` builds anything (``guards``).
    config_bounds: ClassVar[dict[str, tuple[float, float]]] = {}
    # -- training ---------------------------------------------------------------------------------
    # Class labels at training time: "never", "optional" (--conditional) or "always" (needs labels).
    class_conditioning: ClassVar[str] = "never"
    # Training-loop settings this family wants instead of TrainConfig's defaults (e.g. a GAN's
    # lr=2e-4); ``gmkit train`` applies them to fresh runs, below --lr / --set train.key=value.
    train_defaults: ClassVar[dict[str, Any]] = {}
    # Options of ``gmkit train`` / ``gmkit.train`` that only this family takes.
    train_options: ClassVar[dict[str, TrainOption]] = {}
    # The data a run trains on when none is named.
    default_data: ClassVar[str] = "mnist"
    # Whether train_step can split a batch into micro-batches (gradient accumulation, ``accum``).
    grad_accum_ok: ClassVar[bool] = True

    def __init__(self, config):
        super().__init__()
        self.config = config

    # -- training -----------------------------------------------------------------------------
    @classmethod
    def fit_config(cls, config, data: DataInfo, conditional: bool):
        """``config`` fitted to the training data: channels, resolution and classes.

        The default serves flat configs with ``in_channels`` and ``image_size`` (and ``num_classes``
        where ``class_conditioning`` is not "never"); families with another layout override it.
        """
        changes: dict[str, Any] = {"in_channels": data.channels, "image_size": data.size}
        if cls.class_conditioning != "never":
            changes["num_classes"] = cls.classes_to_train(data, conditional)
        elif conditional:
            raise OptionError("conditional", f"{cls.name} cannot be trained class-conditionally; drop {{conditional}}")
        return dataclasses.replace(config, **changes)

    @classmethod
    def classes_to_train(cls, data: DataInfo, conditional: bool) -> int:
        """How many classes a fresh model conditions on (0 = unconditional), checked against the data."""
        if cls.class_conditioning == "never":
            if conditional:
                raise OptionError("conditional", f"{cls.name} cannot be trained class-conditionally; drop {{conditional}}")
            return 0
        want = conditional or cls.class_conditioning == "always"
        if want and not data.num_classes:
            who = f"{cls.name}" if not conditional else "{conditional}"
            raise OptionError("conditional", f"{who} needs labelled data (a bundled data set, or class subfolders)")
        return data.num_classes if want else 0

    @classmethod
    def check_train_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Refuse family training options this family does not take, naming who takes them."""
        for key, value in options.items():
            if key not in cls.train_options:
                from . import family_classes

                takers = {n: c.train_options[key] for n, c in family_classes().items() if key in c.train_options}
                who = next((o.applies_to for o in takers.values() if o.applies_to), ", ".join(sorted(takers)) or "no family")
                raise OptionError(key, f"applies to {who}; {cls.name} does not take it")
            cls.train_options[key].check(key, value)
        return options

    @classmethod
    def load_training_data(cls, spec: str, opts, options: dict[str, Any]):
        """The training data (``gmkit.data.ImageData``) ``spec`` names, read with ``opts`` (``DataOptions``);
        ``options`` are the family's ``train_options`` given. Translation families read image pairs here."""
        from ..data.core import load

        return load(spec, opts)

    @classmethod
    def build_for_training(cls, config, data, setup: TrainSetup) -> tuple["Family", dict]:
        """A fresh model to train on ``data`` (a ``gmkit.data.ImageData``), and entries for its recipe.

        The default fits the config to the data, applies config-valued ``train_options`` and seeds the
        weights; latent diffusion also trains or loads its first stage here.
        """
        sets = {cls.train_options[k].config_key: v for k, v in setup.options.items() if cls.train_options[k].config_key}
        config = cls.fit_config(dataclasses.replace(config, **sets), DataInfo.of(data), setup.conditional)
        torch.manual_seed(setup.seed)  # identical initial weights on every rank
        return cls(config), {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training losses for a batch: must include ``loss``; other entries are logged."""
        raise NotImplementedError

    def prepare_training(self, data, device: torch.device, quiet: bool = False) -> None:
        """Called once before training: a family may precompute per-image work here."""

    def optimizers(self, lr: float, weight_decay: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)}

    def train_step(self, wrapped: nn.Module, batch: dict, opts: dict, step: int, grad_clip: float,
                   accum: int = 1) -> dict[str, float]:
        """One optimizer step. ``wrapped`` is this module, or its DDP wrapper: call it, not ``self``.

        A non-finite loss is returned without stepping, so the weights stay good. A family that finds
        training cannot usefully go on (mode collapse) raises ``errors.StopTraining``.
        """
        opt = opts["model"]
        opt.zero_grad(set_to_none=True)
        losses = self.backward(wrapped, batch, accum)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            return {"loss": float(loss.detach())}
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        opt.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": float(norm)}

    def backward(self, wrapped: nn.Module, batch: dict, accum: int = 1) -> dict[str, torch.Tensor]:
        """Losses of ``batch`` with their gradients added to ``.grad``, over ``accum`` equal micro-batches
        (gradient accumulation: the gradient of the batch's mean loss, holding the activations of one
        micro-batch at a time; under DDP gradients are all-reduced once, with the last). Returns the
        losses averaged over the micro-batches; a non-finite loss is returned before any backward."""
        import contextlib

        if accum == 1:
            losses = wrapped(batch)
            if torch.isfinite(losses["loss"]):
                losses["loss"].backward()
            return losses
        n = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
        parts = [{k: (v[i * n // accum:(i + 1) * n // accum] if torch.is_tensor(v) else v) for k, v in batch.items()}
                 for i in range(accum)]
        total: dict[str, torch.Tensor] = {}
        for i, part in enumerate(parts):
            sync = i == accum - 1 or not hasattr(wrapped, "no_sync")  # DDP: reduce on the last micro-batch only
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                losses = wrapped(part)
                if not torch.isfinite(losses["loss"]):
                    return {k: v.detach() for k, v in losses.items()}
                (losses["loss"] / accum).backward()
            for k, v in losses.items():
                total[k] = total.get(k, 0) + v.detach() / accum
        return total

    def training_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the weights that an exact resume needs (e.g. CycleGAN's image pool); they go
        to train_state.safetensors only, never to the model file."""
        return {}

    def load_training_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``training_state`` returned."""

    # -- shapes -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images; flat configs name ``in_channels`` and ``image_size``."""
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    @property
    def dims(self) -> int:
        """Numbers per image (C * H * W): the denominator of bits/dim."""
        c, h, w = self.image_shape
        return c * h * w

    @property
    def num_classes(self) -> int:
        """Classes this model is conditioned on (0: unconditional)."""
        return 0

    def class_labels(self, class_label, n: int, device) -> torch.Tensor | None:
        """``class_label`` (one class, or one per image) as ``n`` labels on ``device``, checked against
        ``num_classes``; None stays None."""
        k = self.num_classes
        if class_label is None:
            return None
        if not k:
            raise OptionError("class_label", f"cannot be used: this {self.name} model is unconditional")
        labels = torch.as_tensor(class_label).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.numel() != n:
            raise GmkitError(f"{labels.numel()} class labels for {n} images")
        if bool(((labels < 0) | (labels >= k)).any()):
            raise OptionError("class_label", f"must be between 0 and {k - 1}, got {labels.unique().tolist()}")
        return labels.to(device)

    def input_channels(self, direction: str | None = None) -> int:
        """Channels of the ``image`` a sample call takes (translation: the input domain's, per direction)."""
        return self.image_shape[0]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an ``--image`` of this size is resized to: the model's resolution here;
        size-agnostic models (super-resolution) return the nearest size they can take."""
        _, h, w = self.image_shape
        return h, w

    # -- generation ---------------------------------------------------------------------------
    def sample(self, noise: list[torch.Generator], **options: Any) -> torch.Tensor:
        """One image per generator, in [-1, 1], shape (N, C, H, W). ``options`` are the checked
        ``SampleOptions`` this family declares in ``sample_options``, plus ``callback``."""
        raise NotImplementedError

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None) -> SamplingPlan:
        """The sampler and steps a call with these options runs, and its network calls per image
        (for bench's timings and compare's table). One network pass for one-pass families."""
        return SamplingPlan(None, None, 1)

    def sampling_networks(self) -> list[nn.Module]:
        """The networks sampling calls (what ``--compile`` compiles in place; compiled lazily, so a
        network never called costs nothing): the direct children by default."""
        return list(self.children())

    def prompt_warnings(self, prompts: list[str]) -> list[str]:
        """What the user should know about these prompts (e.g. truncation); text-to-image families."""
        return []

    def encode(self, x: torch.Tensor, **options: Any) -> dict[str, torch.Tensor]:
        """Images (N, C, H, W) in [-1, 1] -> named latent tensors (``latent_key`` is what decode reads)."""
        raise GmkitError(f"{self.name} models cannot encode images")

    def decode(self, z: torch.Tensor, **options: Any) -> torch.Tensor:
        """Latents as ``encode`` gives them under ``latent_key`` -> images in [-1, 1]."""
        raise GmkitError(f"{self.name} models have no decoder")

    def latent_metadata(self) -> dict[str, str]:
        """Metadata an encoded file carries so decode can refuse latents of another model (VQ-VAE:
        the codebook's fingerprint). Decode compares every key given here with the file's."""
        return {}

    def latent_description(self) -> dict[str, Any] | None:
        """What this family's latent space is, for ``gmkit compare``: e.g. ``{"kind": "continuous",
        "shape": [16], "text": "continuous Gaussian, 16-d"}``. None (the default) lets compare infer
        it from the capabilities and from what ``encode`` returns."""
        return None

    def bits_per_dim(self, x: torch.Tensor, labels: torch.Tensor | None = None, steps: int | None = None,
                     batch_size: int = 50, seed: int = 0) -> dict:
        """Held-out bits/dim of images ``x`` in [-1, 1]: a dict with ``bpd`` (a density) or
        ``iwae_bpd`` (a bound). ``labels`` for class-conditional models, ``steps`` for ODE likelihoods
        (``likelihood_steps``)."""
        raise GmkitError(f"{self.name}: {self.no_likelihood or 'no likelihood'}")

    # -- checks -------------------------------------------------------------------------------
    def check_latents(self, z: torch.Tensor, dim: int) -> None:
        """Refuse a latent matrix that is not (N, dim), is empty or holds NaN/inf, naming the problem."""
        if z.ndim != 2 or z.shape[1] != dim:
            raise GmkitError(f"{self.name} decode: latents of shape {tuple(z.shape)}, this model needs (N, {dim})")
        if z.shape[0] == 0:
            raise GmkitError(f"{self.name} decode: no latents (the tensor is empty)")
        if not bool(torch.isfinite(z).all()):
            raise GmkitError(f"{self.name} decode: the latents hold NaN or infinite values")

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse sample options this family cannot use, naming them and who takes them."""
        unknown = sorted(k for k, v in options.items() if v is not None and k not in self.sample_options)
        if not unknown:
            return
        from . import family_classes

        key = unknown[0]
        names = " and ".join("{" + k + "}" for k in unknown)
        what = {"image": "image editing and upsampling", "prompt": "text-to-image models",
                "class_label": "class-conditional models"}.get(key)
        can = sorted(n for n, cls in family_classes().items() if key in cls.sample_options) if what else []
        raise OptionError(key, f"{self.name} models do not take {names}" + (f" ({what}: {', '.join(can)})" if can else ""))
