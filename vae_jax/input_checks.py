"""The input checks of ``vae_jax.model`` and ``vae_jax.losses``: arrays, parameters, settings.

Rules and messages live in ``vae_common.checks``, the same in ``vae_torch.input_checks``. Shapes
and dtypes are checked always, also under ``jax.jit`` (they are static); values (``beta`` and
``free_bits`` finite and >= 0, ``std`` finite and > 0, ``x`` finite and in [0, 1] for the
Bernoulli likelihood) only when the value is concrete: a ``jax.core.Tracer`` cannot be inspected
while tracing, so inside a jitted function the values are not checked (the trainers check their
data once, up front).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_common import checks
from vae_common.checkpoint import check_param_mapping, spec_shapes
from vae_common.config import VAEConfig
from vae_common.errors import CheckpointError
from vae_jax._typing import Array, ArrayLike, Params

if TYPE_CHECKING:
    from vae_jax.model import VAE  # the model imports this module


def _dtype_name(a: ArrayLike) -> str:
    # The dtype as given (before any conversion), so the message names what the caller passed.
    dtype = getattr(a, "dtype", None)
    return checks.dtype_name(np.asarray(a).dtype if dtype is None else dtype)


def check_input(model: VAE, x: ArrayLike, name: str = "x") -> Array:
    """``x`` in the model's dtype; ``ShapeError`` unless it is a real floating-point array
    (B, C, H, W) of the config with B >= 1 (rules in ``vae_common.checks``). Shapes and dtypes
    only, so it runs under ``jax.jit`` tracing too."""
    checks.check_images(name, np.shape(x), model.config.input_shape)
    checks.check_dtype(name, _dtype_name(x))
    return jnp.asarray(x, model.dtype)


def check_eps(model: VAE, eps: ArrayLike, batch: int, name: str = "eps") -> Array:
    """``eps`` as an array of the model's dtype; ``ShapeError`` unless it is a real
    floating-point array (B, L) or (K, B, L) with K >= 1."""
    checks.check_noise(name, np.shape(eps), batch, model.config.latent_dim)
    checks.check_dtype(name, _dtype_name(eps))
    return jnp.asarray(eps, model.dtype)


def check_latents(model: VAE, z: ArrayLike, name: str = "z") -> Array:
    """``z`` as an array of the model's dtype; ``ShapeError`` unless it is a real
    floating-point array (B, L) with B >= 1."""
    checks.check_latents(name, np.shape(z), model.config.latent_dim)
    checks.check_dtype(name, _dtype_name(z))
    return jnp.asarray(z, model.dtype)


@functools.lru_cache(maxsize=64)
def _flax_layout(
    config: VAEConfig,
) -> tuple[Mapping[tuple[str, ...], str], Mapping[str, tuple[int, ...]]]:
    """``({Flax path: canonical name}, {canonical name: shape in Flax layout})`` of ``config``,
    from the declared table of ``vae_jax.convert``."""
    from vae_jax.convert import conversion_table  # convert imports the model, which imports this

    spec = spec_shapes(config)
    table = conversion_table(config)
    names = {e.path: e.name for e in table}
    shapes = {e.name: tuple(spec[e.name][i] for i in e.permutation) for e in table}
    return types.MappingProxyType(names), types.MappingProxyType(shapes)


def check_params(model: VAE, params: Params) -> None:
    """``CheckpointError`` unless ``params`` holds exactly the model's Flax paths, each an array
    of the expected shape in the model's dtype; keys are reported by canonical name (a path the
    table does not know, by its "/"-joined path). Under ``jit`` it runs once, while tracing."""
    names, shapes = _flax_layout(model.config)
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    stack: list[tuple[tuple[str, ...], Any]] = [((), params)]
    while stack:
        prefix, node = stack.pop()
        if not isinstance(node, Mapping):
            raise CheckpointError(
                f"the params mapping must be nested mappings of arrays, got {type(node).__name__}"
            )
        for key, value in node.items():
            path = prefix + (str(key),)
            if isinstance(value, Mapping):
                stack.append((path, value))
                continue
            name = names.get(path, "/".join(path))
            if not hasattr(value, "shape") or not hasattr(value, "dtype"):
                raise CheckpointError(
                    f"the params mapping: {name!r} is a {type(value).__name__}, not an array"
                )
            found[name] = (tuple(value.shape), np.dtype(value.dtype).name)
    check_param_mapping(found, shapes, np.dtype(model.dtype).name, what="the params mapping")


def _is_traced(a: Any) -> bool:
    return isinstance(a, jax.core.Tracer)


def check_setting(name: str, value: Any) -> None:
    """``beta`` or ``free_bits``: a scalar always; finite and >= 0 when concrete."""
    if _is_traced(value):
        if value.ndim != 0:
            raise checks.scalar_error(name, value.shape)
        return
    checks.check_weight(name, np.asarray(value) if isinstance(value, jax.Array) else value)


def check_std(std: Any) -> None:
    """The Gaussian likelihood's ``std``: ``ConfigError`` unless finite and > 0 (when concrete)."""
    if not _is_traced(std):
        checks.check_std(np.asarray(std) if isinstance(std, jax.Array) else std)


def check_pixel_values(model: VAE, x: ArrayLike) -> None:
    """``x`` finite, and in [0, 1] for the Bernoulli likelihood; skipped for a tracer.

    Also run on a concrete x met while tracing (a constant closed over by a jitted function):
    computed eagerly then, not staged into the traced computation.
    """
    if _is_traced(x):
        return
    with jax.ensure_compile_time_eval():
        x = jnp.asarray(x, model.dtype)  # the values the loss sees, as in torch
        lo, hi = float(jnp.min(x)), float(jnp.max(x))
    error = checks.pixel_value_error("x", lo, hi, model.config.likelihood)
    if error is not None:
        raise error


def check_loss_inputs(
    model: VAE,
    x: ArrayLike,
    eps: ArrayLike,
    check_values: bool = True,
    ndim: int | None = None,
    fn: str = "",
) -> tuple[Array, Array]:
    """``(x, eps)`` of a loss as arrays of the model's dtype: shapes and dtypes first, then
    (``check_values``) the values of x; ``ndim``: the number of axes ``fn`` needs eps to have
    (2 or 3) when it does not take both."""
    given = x
    x = check_input(model, x)
    eps = check_eps(model, eps, x.shape[0])
    if ndim is not None:
        checks.check_noise_rank(fn, "eps", eps.shape, ndim)
    if check_values:
        # The converted x is a tracer under jit even for a concrete input: check what was given.
        check_pixel_values(model, given if _is_traced(x) else x)
    return x, eps
