"""``gmkit.train(...)``: a training run set up exactly as ``gmkit train`` sets it up, then the loop.

What happens before the loop (``loop.py``): the family's config (its defaults, a config file or dict,
``key=value`` overrides), the loop's config (``TrainConfig`` below the family's ``train_defaults``),
the data, and a fresh model built by the family itself (``Family.build_for_training``: the config
fitted to the data, an LDM's first stage), or the run's own configs when resuming. The recipe
written into every checkpoint says how, including the run folder (``compare`` finds the log there).

    import gmkit
    summary = gmkit.train("ddpm", data="mnist", out="runs/x", steps=2000)
    model = gmkit.load("runs/x")
"""

from __future__ import annotations

import json
import shlex
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable

from .errors import OptionError
from .progress import note


def _overrides(overrides: Iterable[str] | dict[str, Any]) -> list[str]:
    if isinstance(overrides, dict):
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    return list(overrides)


def _positive(name: str, value, number=int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, number) or not value > 0):
        raise OptionError(name, f"must be a positive {'integer' if number is int else 'number'}, got {value!r}")


def _call_text(family: str, **given) -> str:
    args = ", ".join([repr(family)] + [f"{k}={v!r}" for k, v in given.items() if v not in (None, False, (), [], {})])
    return f"gmkit.train({args})"


def train(family: str, data: str | None = None, out: str | Path | None = None, *, steps: int | None = None,
          batch_size: int | None = None, lr: float | None = None, image_size: int | None = None, seed: int | None = None,
          conditional: bool = False, resume: str | Path | None = None, config: str | Path | dict | None = None,
          overrides: Iterable[str] | dict[str, Any] = (), checkpoint_every: int | None = None,
          save_dtype: str | None = None, device: str = "auto", on_bad_image: str = "skip", quiet: bool = False,
          command: str | None = None, split: str | None = None, columns: dict[str, str] | None = None,
          stream: bool = False, random_flip: bool = False, random_crop: bool = False, workers: int | None = None,
          preset: str | None = None, grad_accum: int | None = None, log_with: str | None = None,
          overwrite: bool = False, revision: str | None = None, token: str | None = None,
          **family_options: Any) -> dict:
    """Train a model of ``family`` (or a bundled name's family: ``ddim`` trains ``ddpm``) on ``data``.

    Writes the run folder ``out`` (default: the ``resume`` folder, else ``runs/<family>``) and returns
    the loop's summary. ``overrides`` are ``key=value`` settings of the family config (``train.key=value``
    for the loop's), or a dict of them. ``family_options`` are the options only some families take
    (``scale`` for sr, ``sde`` for score, ``autoencoder`` / ``ae_steps`` for ldm). ``command`` is what the
    recipe records (the CLI passes its command line). ``split``, ``columns``, ``stream``, ``random_flip``,
    ``random_crop`` and ``workers`` are ``gmkit.data.DataOptions`` settings; ``preset`` a model size
    (``gmkit.presets``, picked from ``image_size`` 32/64/128/256 when not given); ``grad_accum`` micro-batches
    per step; ``log_with`` an experiment tracker (tensorboard, wandb, trackio). An ``out`` that holds a
    run already is continued only with ``resume`` and replaced only with ``overwrite``; one process at a
    time trains into a folder (a lock). ``revision`` / ``token``: for a Hub repo ``autoencoder`` (ldm,
    vqgpt; also ``autoencoder="org/name@REVISION"``); the token is never written into the run.
    """
    import torch

    from .config import TrainConfig, apply_overrides, check_train_config, from_dict, to_dict
    from .data.core import DataOptions
    from .presets import apply_preset, auto_preset, takes_presets
    from .tracking import check_tracker
    from .devices import resolve_device
    from .families import get_family
    from .guards import check_config
    from .loop import dist_info, load_resume_config, read_train_state
    from .outputs import check_run_folder, remove_stale_temps, run_lock
    from .registry import BUNDLED_MODELS

    for name, v in (("steps", steps), ("batch_size", batch_size), ("image_size", image_size),
                    ("checkpoint_every", checkpoint_every), ("grad_accum", grad_accum)):
        _positive(name, v)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise OptionError("workers", f"must be 0 or more, got {workers!r}")
    check_tracker(log_with)
    _positive("lr", lr, (int, float))
    if on_bad_image not in ("skip", "error"):
        raise OptionError("on_bad_image", "must be skip or error")
    cls = get_family(BUNDLED_MODELS[family].family if family in BUNDLED_MODELS else family)
    given_options = cls.check_train_options({k: v for k, v in family_options.items() if v is not None})
    for name, value in (("revision", revision), ("token", token)):
        if value is not None and resume is None and given_options.get("autoencoder") is None:
            raise OptionError(name, f"{{{name}}} applies to a Hub model source given as {{autoencoder}} (ldm, vqgpt)")
    if (grad_accum or 1) > 1 and not cls.grad_accum_ok:
        raise OptionError("grad_accum", f"{cls.name} cannot accumulate gradients over micro-batches")
    rank, local_rank, world = dist_info()
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)

    sets = _overrides(overrides)
    family_sets = [s for s in sets if not s.startswith("train.")]
    train_sets = [s[len("train."):] for s in sets if s.startswith("train.")]
    resume_state, recipe_prev = None, {}
    if resume is not None:
        resume = Path(resume)
        resume_state = read_train_state(resume)
        cfg, tcfg = load_resume_config(resume_state, cls)
        recipe_prev = json.loads(resume_state[1].get("gmkit.recipe", "{}"))
        ignored = [*given_options, *(["revision"] if revision else []), *(["token"] if token else [])]
        if config is not None or family_sets or conditional or ignored:
            note("gmkit: resuming keeps the run's model config; the config, its overrides, conditional and "
                 f"{', '.join(ignored) or 'family options'} are ignored", quiet)
        if image_size is not None and recipe_prev.get("image_size") not in (None, image_size):
            raise OptionError("image_size", f"{image_size}: the run was trained at {recipe_prev['image_size']}")
        data = data or recipe_prev.get("data")
        image_size = recipe_prev.get("image_size") or image_size
        prev = recipe_prev.get("data_options", {})  # the run's data, read the same way again
        split, stream = split or prev.get("split"), stream or prev.get("stream", False)
        random_flip = random_flip or prev.get("random_flip", False)
        random_crop = random_crop or prev.get("random_crop", False)
        columns = {**prev.get("columns", {}), **(columns or {})}
        out = out or resume
    else:
        base, preset_train = _base_config(cls, config), {}
        if preset is None and config is None and takes_presets(cls):
            preset = auto_preset(image_size, dev.type)
            if preset is not None:
                note(f"gmkit: preset {preset} for {image_size} px on {dev.type} (preset picks another)", quiet or rank > 0)
        if preset is not None:
            preset_cfg, preset_train, size = apply_preset(preset, cls, from_dict(cls.Config, base, "config"), image_size)
            base, image_size = to_dict(preset_cfg), image_size or size
        cfg = from_dict(cls.Config, apply_overrides(base, family_sets), "config")
        tcfg = from_dict(TrainConfig, {**to_dict(TrainConfig()), **cls.train_defaults, **preset_train},
                         f"{cls.name} train defaults")
    tdict = to_dict(tcfg)
    for key, val in (("steps", steps), ("batch_size", batch_size), ("lr", lr), ("seed", seed),
                     ("checkpoint_every", checkpoint_every), ("save_dtype", save_dtype), ("grad_accum", grad_accum)):
        if val is not None:
            tdict[key] = val
    # One check of the loop's settings, whatever route set them: flags, --set train.*, a resumed run.
    tcfg = check_train_config(from_dict(TrainConfig, apply_overrides(tdict, train_sets), "train"))
    check_config(cls, cfg)
    if resume_state is not None and recipe_prev.get("data_b"):  # the second domain of unpaired data
        given_options.setdefault("data_b", recipe_prev["data_b"])
    data = data or cls.default_data
    out = Path(out) if out is not None else Path("runs") / cls.name
    with ExitStack() as hold:
        if rank == 0:
            hold.enter_context(run_lock(out))
            check_run_folder(out, resume, overwrite)
            stale = remove_stale_temps(out)
            if stale:
                note(f"gmkit: removed {stale} temporary file(s) an interrupted process left in {out}", quiet)
        if resume_state is not None:
            note(f"gmkit: resuming {resume} from step {int(resume_state[1].get('gmkit.step', 0)):,} "
                 f"(to step {tcfg.steps:,})", quiet or rank > 0)
        data_opts = DataOptions(split=split or "train", image_size=image_size, columns=dict(columns or {}),
                                stream=stream, random_flip=random_flip, random_crop=random_crop,
                                on_bad_image=on_bad_image, workers=workers, progress=not quiet and rank == 0)
        return _train(cls, family, data, data_opts, out, tcfg, cfg, dev, rank, world, image_size, conditional,
                      given_options, resume, resume_state, recipe_prev, sets, command, quiet, log_with,
                      dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, revision=revision, token=token))


def _train(cls, family, data, data_opts, out, tcfg, cfg, dev, rank, world, image_size, conditional, given_options,
           resume, resume_state, recipe_prev, sets, command, quiet, log_with, flags) -> dict:
    """The run itself, under the run folder's lock: data, the model (a fresh one checked on the meta
    device first), the recipe, the loop."""
    import torch

    from .families.base import DataInfo, TrainSetup
    from .guards import dry_build
    from .loop import train as run_loop

    ds = cls.load_training_data(data, data_opts, given_options)
    setup_recipe: dict = {}
    if resume_state is None:
        # The network this config makes, on the meta device first: no --set can allocate gigabytes.
        dry_build(cls, cls.fit_config(cfg, DataInfo.of(ds), conditional), "the model config")
        setup = TrainSetup(out=out, seed=tcfg.seed, device=dev, data_spec=data, conditional=conditional,
                           options=given_options, quiet=quiet or rank > 0, revision=flags["revision"],
                           token=flags["token"])
        net, setup_recipe = cls.build_for_training(cfg, ds, setup)
    else:
        net = cls(cfg)
        setup_recipe = {k: recipe_prev[k] for k in recipe_prev.get("family_setup", []) if k in recipe_prev}
        if tuple(ds.image_shape) != tuple(net.image_shape):
            raise OptionError("resume", f"the data gives images of shape {tuple(ds.image_shape)}, "
                                        f"the run was trained on {tuple(net.image_shape)}")
    steps, batch_size, lr, seed = flags["steps"], flags["batch_size"], flags["lr"], flags["seed"]
    recipe = {"command": command or _call_text(family, data=data, out=str(out), steps=steps, batch_size=batch_size,
                                               lr=lr, image_size=image_size, seed=seed, conditional=conditional,
                                               resume=str(resume) if resume else None, overrides=sets,
                                               revision=flags["revision"], **given_options),
              "data": data, **({"data_b": given_options["data_b"]} if given_options.get("data_b") else {}),
              "data_note": ds.note, "image_size": image_size, "train_images": ds.count, "world_size": world,
              "data_options": {"split": data_opts.split, "columns": data_opts.columns, "stream": data_opts.stream,
                               "random_flip": data_opts.random_flip, "random_crop": data_opts.random_crop},
              "device": str(dev), "torch": torch.__version__, "params": sum(p.numel() for p in net.parameters()),
              # Where the log is: compare reads training stability from it (never by re-parsing the command).
              "run_folder": str(out.resolve()), **setup_recipe, "family_setup": sorted(setup_recipe),
              # What an input image is compared with (an out-of-distribution note in sample / encode).
              "data_stats": pixel_stats(ds.images(4096))}
    if ds.note.startswith("OpenMoji"):
        from .data.captioned import OPENMOJI_LICENSE

        recipe["data_license"] = OPENMOJI_LICENSE
    if recipe_prev.get("command") and resume_state is not None:
        recipe["earlier_commands"] = recipe_prev.get("earlier_commands", []) + [recipe_prev["command"]]
    if rank == 0:
        note(f"gmkit: training {cls.name} ({recipe['params'] / 1e6:.2f}M parameters) on {data} "
             f"({ds.count if ds.count is not None else 'a stream of'} images {tuple(ds.image_shape)}) on {dev}, "
             f"{world} process(es) -> {out}", quiet)
    summary = run_loop(net, ds, out, tcfg, dev, recipe, resume_state, quiet, data_opts.workers, log_with)
    summary["model"] = str(out / "model.safetensors")
    if rank == 0:
        note(f"gmkit: done: step {summary['step']}, {summary['it_s']} it/s; model in {summary['model']}", quiet)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()
    return summary


def pixel_stats(images) -> list[float]:
    """Mean and standard deviation of (up to 4096) training images' pixels, in [0, 1]."""
    x = (images.float() + 1) / 2
    return [round(float(x.mean()), 4), round(float(x.std()), 4)]


def _base_config(cls, config) -> dict:
    """The family config to start from: its defaults, a dict, or a JSON file."""
    from .config import to_dict

    if config is None:
        return to_dict(cls.Config())
    if isinstance(config, dict):
        return config
    try:
        return json.loads(Path(config).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OptionError("config", f"{config}: cannot read JSON ({e})") from None


def command_line(argv: list[str]) -> str:
    """The recipe's record of a command line, quoted so it can be run again; a ``--token`` value is
    replaced by ``***`` (checkpoints are shared, tokens are secrets)."""
    shown, hide = [], False
    for arg in argv:
        if hide:
            shown.append("***")
        elif arg.startswith("--token="):
            shown.append("--token=***")
        else:
            shown.append(arg)
        hide = arg == "--token" and not hide
    return "gmkit " + shlex.join(shown)
