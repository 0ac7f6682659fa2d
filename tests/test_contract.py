"""The family contract and the repository's map: hooks read as declared, errors that name settings
(the CLI maps them to flags), one definition of each shared piece, a README layout that names every module."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import gmkit
from gmkit.cli._common import flag
from gmkit.errors import GmkitError, OptionError

ROOT = Path(__file__).resolve().parents[1]


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = re.search(r"## Layout\n+```\n(.*?)```", readme, re.S).group(1)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", layout))
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "gmkit").rglob("*.py"))
               if p.stem != "__init__" and p.stem not in words]
    assert not missing, f"README layout does not name {missing}"
    folders = [p.name for p in (ROOT / "gmkit").iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert all(f"gmkit/{f}/" in layout for f in folders), folders


@pytest.mark.parametrize("call, setting", [
    (lambda: gmkit.load("vae", device="cpu").net.encode(torch.zeros(1, 1, 28, 28), class_label=3), "class_label"),
    (lambda: gmkit.load("gan", device="cpu").net.sample([torch.Generator()], truncation=-1.0), "truncation"),
    (lambda: gmkit.load("flow", device="cpu").net.sample([torch.Generator()], temperature=-1.0), "temperature"),
    (lambda: gmkit.load("flow", device="cpu").net.encode(torch.zeros(1, 1, 28, 28), class_label=1), "class_label"),
])
def test_model_errors_name_the_setting_and_the_cli_the_flag(call, setting):
    with pytest.raises(OptionError) as e:
        call()
    assert e.value.setting == setting and "--" not in str(e.value), str(e.value)
    assert flag(setting) in e.value.render(flag)


def test_text_to_image_training_data_is_one_check():
    from gmkit.families.ldm import LDM
    from gmkit.families.vqgpt import VQGPT

    for cls in (LDM, VQGPT):
        model = cls.__new__(cls)  # the check reads the family's name only
        with pytest.raises(OptionError, match="no stream") as e:
            model.check_training_data(SimpleNamespace(name="shards", streamed=True, captions=["a"]))
        assert e.value.setting == "data" and e.value.render(flag).startswith("--data shards:")
        with pytest.raises(OptionError, match=f"{cls.name} needs captions"):
            model.check_training_data(SimpleNamespace(name="mnist", streamed=False, captions=None))
        model.check_training_data(SimpleNamespace(name="openmoji", streamed=False, captions=["a"]))
        with pytest.raises(OptionError, match=f"{cls.name} needs captioned data") as e:
            cls.check_captioned(SimpleNamespace(name="mnist", captioned=False), False)
        assert e.value.render(flag).startswith("--data mnist:")
        with pytest.raises(OptionError, match="captions, not classes") as e:
            cls.check_captioned(SimpleNamespace(name="openmoji", captioned=True), True)
        assert e.value.render(flag).startswith("--conditional does not apply")
        cls.check_captioned(SimpleNamespace(name="openmoji", captioned=True), False)


def test_family_config_bounds_are_read_as_declared():
    from gmkit.families.ddpm import DDPM, DDPMConfig
    from gmkit.guards import check_config

    class Narrow(DDPM):
        config_bounds = {"num_train_timesteps": (1, 50)}

    cfg = DDPMConfig(num_train_timesteps=100)
    assert check_config(DDPM, cfg) is cfg
    with pytest.raises(GmkitError, match="num_train_timesteps: must be between 1 and 50"):
        check_config(Narrow, cfg)


def test_scheduler_config_reads_the_process_settings():
    from gmkit.families.ddpm import DDPMConfig
    from gmkit.interop.export import scheduler_config

    c = DDPMConfig(variance_type="fixed_large", solver_spacing="leading", set_alpha_to_one=False)
    assert scheduler_config(c, "ddpm")["variance_type"] == "fixed_large"
    assert scheduler_config(c, "ddim")["set_alpha_to_one"] is False
    assert scheduler_config(c, "dpm++2m")["timestep_spacing"] == "leading"
    assert scheduler_config(DDPMConfig(), "dpm++2m")["timestep_spacing"] == "trailing"


def test_one_norm_layer_for_gan_and_translation():
    from torch import nn

    from gmkit.families import gan
    from gmkit.nn import blocks, translation

    assert gan.norm_layer is translation.norm_layer is blocks.norm_layer
    kinds = {"instance": nn.InstanceNorm2d, "batch": nn.BatchNorm2d, "group": nn.GroupNorm, "none": nn.Identity}
    for kind, cls in kinds.items():
        assert type(blocks.norm_layer(kind, 16)) is cls
