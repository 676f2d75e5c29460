"""The input rules both backends apply to arrays and loss settings, written once.

Every function here takes plain Python values (shapes as tuples, dtypes by name, scalars as
floats) and raises the project's error with its message, so ``vae_jax`` and ``vae_torch`` refuse
the same inputs with the same error class and the same words. The backends decide only how to get
those values from their arrays, and when a value is concrete enough to check (never a JAX tracer
or a tensor inside ``torch.compile``: shapes and dtypes are always checked, values only on
concrete inputs).

Error classes: ``ShapeError`` for a shape or a dtype, ``ConfigError`` for a setting (``beta``,
``free_bits``, ``std``), ``DataError`` for pixel values (the rule ``vae_common.data`` applies to a
dataset is the same, ``pixel_value_error``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vae_common.errors import ConfigError, DataError, ShapeError

# The dtypes an input array may have (it is then cast to the model's float32 or float64).
# Integer, bool and complex arrays are refused: casting them would silently change the maths
# (complex values lose their imaginary part, integer noise is not N(0, 1)).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

Shape = Sequence[int]


def dtype_name(dtype: Any) -> str:
    """The bare name of a numpy, JAX or torch dtype: ``float32``, ``int64``, ``complex64``..."""
    name = getattr(dtype, "name", None)
    return str(name if isinstance(name, str) else dtype).removeprefix("torch.")


def _fmt(shape: Shape) -> str:
    return str(tuple(int(s) for s in shape))


def check_dtype(name: str, dtype: str) -> None:
    """``ShapeError`` unless ``dtype`` (a name, see ``dtype_name``) is one of ``FLOAT_DTYPES``."""
    if dtype not in FLOAT_DTYPES:
        raise ShapeError(
            f"{name} must be floating point ({', '.join(FLOAT_DTYPES)}; not integer, bool or "
            f"complex), got dtype {dtype}"
        )


def check_images(name: str, shape: Shape, input_shape: Shape) -> None:
    """``ShapeError`` unless ``shape`` is (B, C, H, W) with B >= 1 and (C, H, W) = input_shape."""
    expected = tuple(input_shape)
    if len(shape) != 4 or tuple(shape[1:]) != expected:
        raise ShapeError(
            f"{name} has shape {_fmt(shape)} but the model expects "
            f"(batch, {', '.join(map(str, expected))})"
        )
    _check_batch(name, shape, 0)


def check_noise(name: str, shape: Shape, batch: int, latent_dim: int) -> None:
    """``ShapeError`` unless ``shape`` is (B, L) or (K, B, L) with K >= 1."""
    if len(shape) not in (2, 3) or tuple(shape[-2:]) != (batch, latent_dim):
        raise ShapeError(
            f"{name} has shape {_fmt(shape)} but must be ({batch}, {latent_dim}) or "
            f"(K, {batch}, {latent_dim}) for a batch of {batch} and latent_dim {latent_dim}"
        )
    if len(shape) == 3 and shape[0] < 1:
        raise ShapeError(f"{name} has shape {_fmt(shape)}: K = 0 noise samples; give at least one")


def check_noise_rank(fn: str, name: str, shape: Shape, ndim: int) -> None:
    """``ShapeError`` unless ``shape`` has ``ndim`` axes: (K, B, L) for 3, (B, L) for 2."""
    if len(shape) != ndim:
        form = "(K, B, L)" if ndim == 3 else "(B, L)"
        raise ShapeError(f"{fn} needs {name} of shape {form}, got {_fmt(shape)}")


def check_latents(name: str, shape: Shape, latent_dim: int) -> None:
    """``ShapeError`` unless ``shape`` is (B, latent_dim) with B >= 1."""
    if len(shape) != 2 or shape[1] != latent_dim:
        raise ShapeError(
            f"{name} has shape {_fmt(shape)} but the model expects (batch, {latent_dim})"
        )
    _check_batch(name, shape, 0)


def _check_batch(name: str, shape: Shape, axis: int) -> None:
    if shape[axis] < 1:
        raise ShapeError(
            f"{name} has shape {_fmt(shape)}: an empty batch; give at least one example"
        )


def check_posterior(fn: str, mean: Shape, logvar: Shape) -> None:
    """``ShapeError`` unless ``mean`` and ``logvar`` are both (B, L), the same shape."""
    if len(mean) != 2:
        raise ShapeError(f"{fn}: mean has shape {_fmt(mean)} but must be (B, L)")
    if tuple(logvar) != tuple(mean):
        raise ShapeError(
            f"{fn}: logvar has shape {_fmt(logvar)} but must be {_fmt(mean)}, the shape of mean"
        )


def check_reparameterize(mean: Shape, logvar: Shape, eps: Shape) -> None:
    """``ShapeError`` unless mean, logvar are (B, L) and eps (B, L) or (K, B, L)."""
    check_posterior("reparameterize", mean, logvar)
    if len(eps) not in (2, 3) or tuple(eps[-2:]) != tuple(mean):
        b, latent = mean
        raise ShapeError(
            f"reparameterize: eps has shape {_fmt(eps)} but must be ({b}, {latent}) or "
            f"(K, {b}, {latent}), the shape of mean with an optional leading sample axis"
        )


def check_pixels(fn: str, x: Shape, other_name: str, other: Shape) -> None:
    """``ShapeError`` unless ``x`` is (B, ...) with at least one axis after B and ``other``
    (the logits or the mean) has the same shape."""
    if len(x) < 2:
        raise ShapeError(f"{fn}: x has shape {_fmt(x)} but must be (B, ...), e.g. (B, C, H, W)")
    if tuple(other) != tuple(x):
        raise ShapeError(
            f"{fn}: {other_name} has shape {_fmt(other)} but must be {_fmt(x)}, the shape of x"
        )


def _real_scalar(name: str, value: Any) -> float:
    if type(value) in (float, int):  # the common case (the trainers pass Python floats)
        return float(value)
    array = np.asarray(value)
    if array.ndim != 0:
        raise scalar_error(name, array.shape)
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"{name} must be a real number, got {value!r}")
    return float(array)


def check_weight(name: str, value: Any) -> None:
    """``ConfigError`` unless ``value`` (``beta`` or ``free_bits``: a Python or numpy scalar, or
    a 0-d array already on the host) is a real number, finite and >= 0."""
    v = _real_scalar(name, value)
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"{name} must be a finite non-negative number, got {v!r}")


def check_std(value: Any) -> None:
    """``ConfigError`` unless the Gaussian likelihood's ``std`` is a real number, finite and > 0."""
    v = _real_scalar("std", value)
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"std must be a finite positive number, got {v!r}")


def scalar_error(name: str, shape: Shape) -> ConfigError:
    """The error for a ``beta``, ``free_bits`` or ``std`` given as an array of ``shape``."""
    return ConfigError(f"{name} must be a number (a scalar), got an array of shape {_fmt(shape)}")


def pixel_value_error(
    name: str, lo: float, hi: float, likelihood: str, nonfinite: int | None = None
) -> DataError | None:
    """The error for pixel values spanning [lo, hi] (None when they are fine).

    One rule for datasets and for the loss functions: every value finite, and in [0, 1] for the
    Bernoulli likelihood (the Gaussian likelihood accepts any finite value). ``lo`` and ``hi`` are
    the minimum and maximum, NaN when any value is NaN (numpy, JAX and torch all propagate NaN
    through min and max). ``nonfinite``, when known, is counted in the message.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        count = "" if nonfinite is None else f"{nonfinite} "
        return DataError(f"{name} contains {count}NaN or Inf values")
    if likelihood == "bernoulli" and (lo < 0 or hi > 1):
        return DataError(
            f"{name} has values in [{_bound(lo)}, {_bound(hi)}]; the Bernoulli likelihood needs "
            "values in [0, 1]"
        )
    return None


def _bound(v: float) -> str:
    # Short, unless rounding would hide the violation (1.0000001 is not shown as 1).
    short = f"{v:g}"
    return short if (0 <= float(short) <= 1) == (0 <= v <= 1) else repr(v)


def image_array(name: str, x: Any, input_shape: Shape, likelihood: str | None) -> np.ndarray:
    """``x`` as a numpy array, checked on the host by the rules of the loss functions.

    (B, C, H, W) with B >= 1 and (C, H, W) = ``input_shape``, floating point (``ShapeError``),
    and unless ``likelihood`` is None its values by ``pixel_value_error`` (``DataError``). The
    trainers call this once on the data they are given, so their compiled steps need no check.
    """
    x = np.asarray(x)
    check_images(name, x.shape, input_shape)
    check_dtype(name, dtype_name(x.dtype))
    if likelihood is not None:
        error = pixel_value_error(name, float(np.min(x)), float(np.max(x)), likelihood)
        if error is not None:
            raise error
    return x


__all__ = [
    "FLOAT_DTYPES",
    "check_dtype",
    "check_images",
    "check_latents",
    "check_noise",
    "check_noise_rank",
    "check_pixels",
    "check_posterior",
    "check_reparameterize",
    "check_std",
    "check_weight",
    "dtype_name",
    "image_array",
    "pixel_value_error",
    "scalar_error",
]
