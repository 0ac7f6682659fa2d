"""The first stage a two-stage model builds on: the autoencoder of latent diffusion (Rombach et al.
2022, section 3), the VQ-VAE of ``vqgpt`` (DALL-E's dVAE, Ramesh et al. 2021). Loaded from a model
source, or trained on the same data into ``OUT/autoencoder`` first (resumed there if a run was
stopped); the owner then carries its config and weights in its own checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field

import torch

from ..errors import GmkitError, OptionError
from .base import DataInfo, TrainOption, TrainSetup

DEFAULT_AE_STEPS = 3000


@dataclass(frozen=True)
class FirstStage:
    """What an owner family needs of its first stage: the stage's family, the owner's config field
    holding the stage's config, and loop settings over the stage family's ``train_defaults``."""

    family: str  # "autoencoder" (ldm), "vqvae" (vqgpt)
    field: str  # "autoencoder", "vq"
    train_overrides: dict = field(default_factory=dict)


def first_stage_options(family: str) -> dict[str, TrainOption]:
    """The ``--autoencoder`` / ``--ae-steps`` options of a family with a first stage."""
    who = "two-stage models (ldm, vqgpt)"
    return {"autoencoder": TrainOption(f"the first stage (a {family} model source); default: train one into "
                                       "OUT/autoencoder first", str, applies_to=who),
            "ae_steps": TrainOption("steps of the first stage trained when none is given", int, minimum=1, applies_to=who)}


def build_with_first_stage(owner_cls, config, data, setup: TrainSetup, stage: FirstStage):
    """(the owner with its first stage loaded, recipe entries naming that first stage)."""
    info = DataInfo.of(data)
    config = owner_cls.fit_config(config, info, setup.conditional)
    source = setup.options.get("autoencoder")
    if source is None:
        source = _train_first_stage(owner_cls.name, config, data, setup, stage,
                                    setup.options.get("ae_steps", DEFAULT_AE_STEPS))
    from ..interop.hub import parse_hub_id
    from ..registry import resolve

    r = resolve(source, revision=setup.revision, token=setup.token)
    if setup.revision is not None:  # the recipe names the revision read: org/name@REVISION
        source = parse_hub_id(source, setup.revision).label
    if r.family.name != stage.family:
        article = "an" if stage.family[0] in "aeiou" else "a"
        raise OptionError("autoencoder", f"{{autoencoder}} {source}: that is a {r.family.name} model, not {article} {stage.family}")
    shape = (r.config.in_channels, r.config.image_size, r.config.image_size)
    if shape != (info.channels, info.size, info.size):
        raise OptionError("autoencoder", f"{{autoencoder}} {source}: it was trained on images {shape}, the data gives "
                                         f"{(info.channels, info.size, info.size)}")
    torch.manual_seed(setup.seed)  # identical initial weights on every rank
    net = owner_cls(dataclasses.replace(config, **{stage.field: r.config}))
    net.load_autoencoder({k: v.float() for k, v in r.state.items()})
    # How the first stage was trained: the owner's file describes both.
    return net, {"autoencoder": source, "autoencoder_recipe": json.loads(r.meta.get("gmkit.recipe", "{}") or "{}")}


def _train_first_stage(owner: str, config, data, setup: TrainSetup, stage: FirstStage, steps: int) -> str:
    from ..config import TrainConfig, from_dict, to_dict
    from ..loop import read_train_state, train
    from . import get_family

    out = setup.out / "autoencoder"
    family = get_family(stage.family)
    tcfg = from_dict(TrainConfig, {**to_dict(TrainConfig()), **family.train_defaults, **stage.train_overrides,
                                   "steps": steps, "seed": setup.seed})

    def say(msg: str) -> None:
        if not setup.quiet:
            print(msg, file=sys.stderr, flush=True)

    state = None
    if (out / "train_state.safetensors").exists():
        state = read_train_state(out)
        say(f"gmkit: continuing the first-stage {stage.family} in {out} from step {int(state[1]['gmkit.step'])}")
        stage_cfg = from_dict(family.Config, json.loads(state[1]["gmkit.config"]))
    else:
        say(f"gmkit: training the first-stage {stage.family} ({steps} steps) -> {out}")
        stage_cfg = family.fit_config(getattr(config, stage.field), DataInfo.of(data), False)
    torch.manual_seed(setup.seed)
    net = family(stage_cfg)
    recipe = {"command": f"gmkit train {owner} (first stage)", "data": setup.data_spec, "data_note": data.note,
              "train_images": len(data), "device": str(setup.device), "torch": torch.__version__,
              "run_folder": str(out.resolve())}
    if state is None or int(state[1]["gmkit.step"]) < steps:
        train(net, data, out, tcfg, setup.device, recipe, state, setup.quiet)
    if not (out / "model.safetensors").is_file():
        raise GmkitError(f"{out}: the first-stage {stage.family} left no model.safetensors")
    return str(out)
