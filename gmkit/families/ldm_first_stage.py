"""The first stage a latent diffusion run builds on (Rombach et al. 2022, section 3): an autoencoder
loaded from a model source, or trained on the same data into ``OUT/autoencoder`` first (resumed
there if a run was stopped), whose config and weights the LDM then carries in its own checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch

from ..errors import GmkitError, OptionError
from .base import DataInfo, TrainSetup

DEFAULT_AE_STEPS = 3000


def build_with_first_stage(ldm_cls, config, data, setup: TrainSetup):
    """(the LDM with its first stage loaded, recipe entries naming that first stage)."""
    info = DataInfo.of(data)
    config = ldm_cls.fit_config(config, info, setup.conditional)
    source = setup.options.get("autoencoder")
    if source is None:
        source = _train_autoencoder(config, data, setup, setup.options.get("ae_steps", DEFAULT_AE_STEPS))
    from ..registry import resolve

    r = resolve(source)
    if r.family.name != "autoencoder":
        raise OptionError("autoencoder", f"{{autoencoder}} {source}: that is a {r.family.name} model, not an autoencoder")
    shape = (r.config.in_channels, r.config.image_size, r.config.image_size)
    if shape != (info.channels, info.size, info.size):
        raise OptionError("autoencoder", f"{{autoencoder}} {source}: it was trained on images {shape}, the data gives "
                                         f"{(info.channels, info.size, info.size)}")
    torch.manual_seed(setup.seed)  # identical initial weights on every rank
    net = ldm_cls(dataclasses.replace(config, autoencoder=r.config))
    net.load_autoencoder({k: v.float() for k, v in r.state.items()})
    # How the first stage was trained: the LDM's file describes both.
    return net, {"autoencoder": source, "autoencoder_recipe": json.loads(r.meta.get("gmkit.recipe", "{}") or "{}")}


def _train_autoencoder(config, data, setup: TrainSetup, steps: int) -> str:
    from ..config import TrainConfig, from_dict, to_dict
    from ..loop import read_train_state, train
    from . import get_family

    out = setup.out / "autoencoder"
    family = get_family("autoencoder")
    tcfg = from_dict(TrainConfig, {**to_dict(TrainConfig()), **family.train_defaults, "steps": steps, "seed": setup.seed})

    def say(msg: str) -> None:
        if not setup.quiet:
            print(msg, file=sys.stderr, flush=True)

    state = None
    if (out / "train_state.safetensors").exists():
        state = read_train_state(out)
        say(f"gmkit: continuing the autoencoder in {out} from step {int(state[1]['gmkit.step'])}")
        ae_cfg = from_dict(family.Config, json.loads(state[1]["gmkit.config"]))
    else:
        say(f"gmkit: training the first-stage autoencoder ({steps} steps) -> {out}")
        ae_cfg = family.fit_config(config.autoencoder, DataInfo.of(data), False)
    torch.manual_seed(setup.seed)
    net = family(ae_cfg)
    recipe = {"command": "gmkit train ldm (first stage)", "data": setup.data_spec, "data_note": data.note,
              "train_images": len(data), "device": str(setup.device), "torch": torch.__version__,
              "run_folder": str(out.resolve())}
    if state is None or int(state[1]["gmkit.step"]) < steps:
        train(net, data, out, tcfg, setup.device, recipe, state, setup.quiet)
    if not (out / "model.safetensors").is_file():
        raise GmkitError(f"{out}: the first-stage autoencoder left no model.safetensors")
    return str(out)
