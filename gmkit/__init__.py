"""gmkit: train, sample, encode and benchmark generative models of every classic family."""

__version__ = "0.1.0"
