"""Type aliases of the JAX backend, for annotations (``vae_torch._typing`` has the same names)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from jax.typing import ArrayLike, DTypeLike  # DTypeLike: "float32" / "float64", a numpy dtype

# What the functions return: a JAX array (a tracer inside jit, grad and vmap).
Array = jax.Array
# The model's "params" collection: {module name: {"kernel" | "bias": array}}, nested as Flax
# builds it (see ``vae_jax.convert``).
Params = Mapping[str, Any]

__all__ = ["Array", "ArrayLike", "DTypeLike", "Params"]
