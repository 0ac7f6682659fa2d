"""gmkit: train, sample, encode and benchmark generative models of every classic family.

    import gmkit
    model = gmkit.load("ddim")            # bundled name, checkpoint, run folder or Hub id
    images = model.sample(16, seed=0)     # PIL images; image i from seed 0 + i
    gmkit.train("ddpm", data="mnist", out="runs/x", steps=2000)

``import gmkit`` stays light: torch is imported on first use of ``load``, ``train`` or ``Model``.
"""

__version__ = "0.1.0"
__all__ = ["load", "train", "Model", "GmkitError", "OptionError"]

from .errors import GmkitError, OptionError  # noqa: E402  (torch-free)


def load(source: str, device="auto", dtype="auto", allow_pickle: bool = False, compile: bool = False,
         revision=None, token=None, lora=(), config=None):
    """A ``gmkit.Model`` from any source the CLI takes (see ``gmkit.model.load``)."""
    from .model import load as _load

    return _load(source, device, dtype, allow_pickle, compile, revision=revision, token=token, lora=lora, config=config)


def train(family: str, data=None, out=None, **settings):
    """Train a model as ``gmkit train`` does and return the summary (see ``gmkit.training.train``)."""
    from .training import train as _train

    return _train(family, data, out, **settings)


def __getattr__(name: str):
    if name == "Model":
        from .model import Model

        return Model
    raise AttributeError(f"module 'gmkit' has no attribute {name!r}")
