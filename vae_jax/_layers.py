"""The layers of the Flax VAE, built like PyTorch's: dense and stride-2 convolutional layers with
PyTorch's default initialisation, named after their canonical parameters.

The counterpart of ``vae_torch._layers``. Each layer keeps its parameters in ``dtype`` and
computes in ``compute`` (the bf16 training precision: ``vae_jax.model.with_precision``);
``to_dtype`` casts a layer's output back to the parameter dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_common.config import CONV_KERNEL, VAEConfig
from vae_common.spec import spec_by_name
from vae_jax._conv import conv_stride2, conv_transpose_stride2
from vae_jax._typing import Array, DTypeLike


def _uniform(bound: float) -> Callable[..., Array]:
    """PyTorch's default init: uniform on (-bound, bound) with bound = 1/sqrt(fan_in)."""

    def init(key: Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> Array:
        # Drawn flat, then reshaped: the same numbers (JAX's default partitionable threefry
        # counts elements in row-major order), but XLA:CPU compiles a rank-4 draw ~4x slower.
        size = int(np.prod(shape))
        return jax.random.uniform(key, (size,), dtype, -bound, bound).reshape(shape)

    return init


def _bound(config: VAEConfig, name: str) -> float:
    # The fan-in comes from the canonical spec, so both backends draw from the same distribution.
    return 1.0 / float(np.sqrt(spec_by_name(config)[f"{name}.weight"].fan_in))


def _module_name(name: str) -> str:
    # The canonical prefix with dots turned into underscores, without the top level
    # ("encoder.hidden.0" -> module "hidden_0" inside "encoder"), as in ``vae_jax.convert``.
    return name.split(".", 1)[1].replace(".", "_")


def dense(
    config: VAEConfig, name: str, features: int, dtype: DTypeLike, compute: DTypeLike
) -> nn.Dense:
    """The dense layer of canonical prefix ``name`` (e.g. ``"encoder.hidden.0"``): (B, in) ->
    (B, features). Parameters in ``dtype``; inputs and kernel cast to ``compute`` for the
    product."""
    bound = _bound(config, name)
    return nn.Dense(
        features,
        dtype=compute,
        param_dtype=dtype,
        kernel_init=_uniform(bound),
        bias_init=_uniform(bound),
        name=_module_name(name),
    )


class _Conv(nn.Module):
    """One stride-2 convolution in NHWC, no activation (see ``vae_jax._conv``).

    ``transposed=False``: torch ``Conv2d``, (B, H, W, C_in) -> (B, H/2, W/2, C_out).
    ``transposed=True``: torch ``ConvTranspose2d``, (B, H, W, C_in) -> (B, 2H, 2W, C_out).
    Parameters: ``kernel`` (4, 4, C_in, C_out) and ``bias`` (C_out,), stored in ``dtype``; the
    convolution and the bias add run in ``compute_dtype`` (None: ``dtype``), as ``nn.Dense``
    does with its ``dtype`` and ``param_dtype``.
    """

    config: VAEConfig
    canonical: str  # the canonical prefix, e.g. "encoder.conv.0" or "decoder.deconv.1"
    c_in: int
    c_out: int
    transposed: bool
    dtype: Any = jnp.float32
    compute_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        bound = _bound(self.config, self.canonical)
        k = CONV_KERNEL
        kernel = self.param("kernel", _uniform(bound), (k, k, self.c_in, self.c_out), self.dtype)
        bias = self.param("bias", _uniform(bound), (self.c_out,), self.dtype)
        op = conv_transpose_stride2 if self.transposed else conv_stride2
        compute = self.compute_dtype or self.dtype
        return op(x.astype(compute), kernel.astype(compute)) + bias.astype(compute)


def conv(config: VAEConfig, name: str, c_in: int, c_out: int, dtype: Any, compute: Any) -> _Conv:
    """torch ``Conv2d`` of canonical prefix ``name``: (B, H, W, c_in) -> (B, H/2, W/2, c_out)."""
    return _Conv(config, name, c_in, c_out, False, dtype, compute, name=_module_name(name))


def conv_transpose(
    config: VAEConfig, name: str, c_in: int, c_out: int, dtype: Any, compute: Any
) -> _Conv:
    """torch ``ConvTranspose2d`` of canonical prefix ``name``: (B, H, W, c_in) ->
    (B, 2H, 2W, c_out)."""
    return _Conv(config, name, c_in, c_out, True, dtype, compute, name=_module_name(name))


def to_dtype(a: Array, dtype: Any) -> Array:
    """``a`` in ``dtype``, the same array when it already is: layer outputs of a lower compute
    dtype go back to the parameter dtype, in which the reparameterization and the losses (and
    their reductions) run."""
    return a if a.dtype == dtype else a.astype(dtype)
