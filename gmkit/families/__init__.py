"""Generative families, one module each, behind the interface in ``base.py``."""

from __future__ import annotations

from ..errors import GmkitError
from .base import Family


def family_classes() -> dict[str, type[Family]]:
    from .augvae import AugVAE
    from .cyclegan import CycleGAN
    from .autoencoder import Autoencoder
    from .ddpm import DDPM
    from .flow import Flow
    from .gan import GAN
    from .ldm import LDM
    from .pix2pix import Pix2Pix
    from .score import Score
    from .sr import SR
    from .vae import VAE
    from .vqvae import VQVAE
    from .vqgpt import VQGPT
    from .vqldm import VQLatentDiffusion

    return {cls.name: cls for cls in (DDPM, VAE, VQVAE, AugVAE, GAN, Flow, Autoencoder, Score, LDM, VQLatentDiffusion, SR,
                                      Pix2Pix, CycleGAN, VQGPT)}


def get_family(name: str) -> type[Family]:
    classes = family_classes()
    if name not in classes:
        raise GmkitError(f"unknown family {name!r} (known: {', '.join(sorted(classes))})")
    return classes[name]
