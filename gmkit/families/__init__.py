"""Generative families, one module each, behind the interface in ``base.py``."""

from __future__ import annotations

from ..errors import GmkitError
from .base import Family


def family_classes() -> dict[str, type[Family]]:
    from .augvae import AugVAE
    from .diffusion import Diffusion
    from .flow import Flow
    from .gan import GAN
    from .vae import VAE
    from .vqvae import VQVAE

    return {cls.name: cls for cls in (Diffusion, VAE, VQVAE, AugVAE, GAN, Flow)}


def get_family(name: str) -> type[Family]:
    classes = family_classes()
    if name not in classes:
        raise GmkitError(f"unknown family {name!r} (known: {', '.join(sorted(classes))})")
    return classes[name]
