"""Reparameterized sampling: the maths is pure, drawing the noise is a separate function."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae_common import checks
from vae_jax._typing import Array, DTypeLike
from vae_jax.model import resolve_dtype


def reparameterize(mean: Array, logvar: Array, eps: Array) -> Array:
    """z = mean + exp(logvar / 2) * eps.

    Args:
      mean, logvar: (B, L).
      eps: standard normal noise, (B, L), or (K, B, L) for K samples per example (broadcast).

    Returns:
      z with the shape of ``eps``. ``ShapeError`` naming the argument unless the shapes are
      these (a shape check only: it runs under tracing and compiling too).
    """
    checks.check_reparameterize(np.shape(mean), np.shape(logvar), np.shape(eps))
    return mean + jnp.exp(0.5 * logvar) * eps


def sample_eps(rng: Array, shape: Sequence[int], dtype: DTypeLike = "float32") -> Array:
    """Standard normal noise of ``shape`` drawn from the JAX key ``rng``."""
    return jax.random.normal(rng, tuple(shape), resolve_dtype(dtype))
