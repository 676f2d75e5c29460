"""The input checks of ``vae_torch.model`` and ``vae_torch.losses``: arrays, parameters, settings.

Rules and messages live in ``vae_common.checks``, the same in ``vae_jax.input_checks``. Shapes and
dtypes are checked always; values (``beta`` and ``free_bits`` finite and >= 0, ``std`` finite and
> 0, ``x`` finite and in [0, 1] for the Bernoulli likelihood) only when the value is concrete.
Python numbers are always concrete (no device sync); tensors are not while ``torch.compile``
traces them or inside a ``torch.func`` transform that wraps them, and are then not checked.
Reading a tensor's check synchronises its device, which is why the training step skips the x
check (``objective(..., check_values=False)``: the trainers check their data once, up front).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vae_common import checks
from vae_common.checkpoint import check_param_mapping, spec_shapes
from vae_common.errors import CheckpointError, ShapeError
from vae_torch._typing import Array, ArrayLike

if TYPE_CHECKING:
    from vae_torch.model import VAE  # the model imports this module

# The input dtypes ``vae_common.checks`` allows, as torch dtypes (a set lookup per call).
_DTYPE_NAMES = {getattr(torch, name): name for name in checks.FLOAT_DTYPES}
_INPUT_DTYPES = frozenset(_DTYPE_NAMES)


def _as_tensor(model: VAE, a: ArrayLike, name: str) -> torch.Tensor:
    """``a`` on the model's device in its dtype, once its dtype passed ``checks.check_dtype``
    (checked as given, before any conversion, so the message names what the caller passed)."""
    first = next(model.parameters())  # once: the generator costs microseconds per call
    device, dtype = first.device, first.dtype
    if isinstance(a, torch.Tensor):
        if a.dtype not in _INPUT_DTYPES:
            checks.check_dtype(name, checks.dtype_name(a.dtype))
        if a.device != device:
            raise ShapeError(f"{name} is on {a.device} but the model is on {device}")
        return a.to(dtype)
    array = np.asarray(a)
    checks.check_dtype(name, checks.dtype_name(array.dtype))
    return torch.as_tensor(array, device=device).to(dtype)


def check_input(model: VAE, x: ArrayLike, name: str = "x") -> torch.Tensor:
    """``x`` in the model's dtype; ``ShapeError`` unless it is a real floating-point array
    (B, C, H, W) of the config with B >= 1 (rules in ``vae_common.checks``). Shapes and dtypes
    only: no device sync."""
    checks.check_images(name, np.shape(x), model.config.input_shape)
    return _as_tensor(model, x, name)


def check_eps(model: VAE, eps: ArrayLike, batch: int, name: str = "eps") -> torch.Tensor:
    """``eps`` as a tensor of the model's dtype; ``ShapeError`` unless it is a real
    floating-point array (B, L) or (K, B, L) with K >= 1."""
    checks.check_noise(name, np.shape(eps), batch, model.config.latent_dim)
    return _as_tensor(model, eps, name)


def check_latents(model: VAE, z: ArrayLike, name: str = "z") -> torch.Tensor:
    """``z`` as a tensor of the model's dtype; ``ShapeError`` unless it is a real
    floating-point array (B, L) with B >= 1."""
    checks.check_latents(name, np.shape(z), model.config.latent_dim)
    return _as_tensor(model, z, name)


def check_params(model: VAE, params: Mapping[str, torch.Tensor]) -> None:
    """``CheckpointError`` unless ``params`` holds exactly the canonical names, each a tensor of
    the spec's shape in the model's dtype: ``functional_call`` would silently use the module's
    own tensor for a missing name and ignore an extra one. Reads only metadata (no device sync).
    """
    if torch.compiler.is_compiling():
        # The compiled step builds its mapping from the module's own parameters; checking it
        # inside the graph would only add guards.
        return
    found = {}
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"the params mapping: {name!r} is a {type(value).__name__}, not a torch.Tensor"
            )
        found[name] = (tuple(value.shape), _dtype_name(value.dtype))
    dtype = _dtype_name(next(model.parameters()).dtype)
    check_param_mapping(found, spec_shapes(model.config), dtype, what="the params mapping")


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype) or str(dtype).removeprefix("torch.")


def _is_traced(t: torch.Tensor) -> bool:
    # A tensor whose value cannot be read here: being traced by torch.compile, or wrapped by a
    # torch.func transform (vmap, grad with respect to it).
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(t)


def check_setting(name: str, value: Any) -> None:
    """``beta`` or ``free_bits``: a scalar always; finite and >= 0 when concrete."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise checks.scalar_error(name, value.shape)
        if _is_traced(value):
            return
        value = value.item()
    checks.check_weight(name, value)


def check_std(std: Any) -> None:
    """The Gaussian likelihood's ``std``: ``ConfigError`` unless finite and > 0 (when concrete)."""
    if isinstance(std, torch.Tensor):
        if std.ndim != 0:
            raise checks.scalar_error("std", std.shape)
        if _is_traced(std):
            return
        std = std.item()
    checks.check_std(std)


def check_pixel_values(model: VAE, x: Array) -> None:
    """``x`` finite, and in [0, 1] for the Bernoulli likelihood; skipped when traced."""
    if _is_traced(x):
        return
    lo, hi = torch.aminmax(x)
    error = checks.pixel_value_error("x", lo.item(), hi.item(), model.config.likelihood)
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
    """``(x, eps)`` of a loss as tensors of the model's dtype: shapes and dtypes first, then
    (``check_values``) the values of x; ``ndim``: the number of axes ``fn`` needs eps to have
    (2 or 3) when it does not take both."""
    x = check_input(model, x)
    eps = check_eps(model, eps, x.shape[0])
    if ndim is not None:
        checks.check_noise_rank(fn, "eps", eps.shape, ndim)
    if check_values:
        check_pixel_values(model, x)
    return x, eps
