"""Constants shared by both backends and the tools, defined once."""

from __future__ import annotations

import math

# The floating dtypes every backend supports, by name.
DTYPES = ("float32", "float64")

# log(2 pi), in the Gaussian log-densities.
LOG_2PI = math.log(2.0 * math.pi)

# Model defaults when the user gives none (the CLI and the benchmark): Kingma & Welling's MNIST
# MLP (784-400-20) and a two-layer conv encoder.
DEFAULT_HIDDEN = {"mlp": (400,), "conv": (256,)}
DEFAULT_LATENT_DIM = 20
DEFAULT_CONV_CHANNELS = (32, 64)

# Untimed steps before the benchmark's clock starts: past PyTorch's denormal slowdown, which
# appears after ~800 Adam steps on the CPU.
BENCH_UNTIMED_STEPS = 900

__all__ = [
    "BENCH_UNTIMED_STEPS",
    "DEFAULT_CONV_CHANNELS",
    "DEFAULT_HIDDEN",
    "DEFAULT_LATENT_DIM",
    "DTYPES",
    "LOG_2PI",
]
