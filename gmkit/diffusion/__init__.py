"""Noise schedules and samplers for diffusion models: small pure functions."""
