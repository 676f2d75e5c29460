"""The checks a canonical state passes before a backend, a kernel or a file sees it: the weights
(``check_state``), Adam's moments and step count, and a backend's ``params`` mapping, by name,
shape, dtype and value; ``CheckpointError`` naming the tensor otherwise.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.constants import DTYPES
from vae_common.errors import CheckpointError
from vae_common.spec import param_spec
from vae_common.training import EXP_AVG, EXP_AVG_SQ, optimizer_state_names

# The largest step count both backends hold exactly: optax keeps Adam's count in an int32.
MAX_STEP = 2**31 - 1


def _check_names(found: Iterable[str], expected: Iterable[str], what: str) -> None:
    """``CheckpointError`` naming every missing and every unexpected name."""
    found, expected = list(found), list(expected)
    present = set(found)
    missing = [n for n in expected if n not in present]
    extra = sorted(present - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        raise CheckpointError(f"{what} does not match the config: " + "; ".join(parts))


def _check_finite(name: str, arr: np.ndarray, what: str) -> None:
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise CheckpointError(
            f"{what}: tensor {name!r} holds {bad} non-finite value{'s' if bad > 1 else ''} "
            "(NaN or Inf)"
        )


def check_state(state: Mapping[str, np.ndarray], config: VAEConfig, what: str = "state") -> str:
    """Check names, shapes, dtypes and values of a canonical ``state`` against ``config``.

    Returns:
      the common dtype name (``"float32"`` or ``"float64"``).

    Raises:
      CheckpointError naming every missing or extra tensor, or the first mis-shaped, mis-typed
      or non-finite one.
    """
    specs = param_spec(config)
    _check_names(state, [s.name for s in specs], what)
    dtypes = set()
    for s in specs:
        arr = state[s.name]
        shape = tuple(np.shape(arr))
        if shape != s.shape:
            raise CheckpointError(
                f"{what}: tensor {s.name!r} has shape {shape}, the config needs {s.shape}"
            )
        dtype = np.dtype(getattr(arr, "dtype", np.float64)).name
        if dtype not in DTYPES:
            raise CheckpointError(
                f"{what}: tensor {s.name!r} has dtype {dtype}; expected one of {DTYPES}"
            )
        _check_finite(s.name, np.asarray(arr), what)
        dtypes.add(dtype)
    if len(dtypes) > 1:
        raise CheckpointError(f"{what}: tensors mix dtypes {sorted(dtypes)}")
    return dtypes.pop()


def check_optimizer_state(
    tensors: Mapping[str, Any], config: VAEConfig, dtype: str, what: str = "optimizer state"
) -> dict[str, np.ndarray]:
    """Check Adam's moments before any optimizer or kernel sees them.

    ``tensors`` must hold exactly ``vae_common.training.optimizer_state_names(config)``, each
    with its parameter's canonical shape, of ``dtype``, finite, the second moments
    (``adam.exp_avg_sq.*``) non-negative.

    Returns:
      the tensors as numpy arrays, in ``optimizer_state_names`` order.

    Raises:
      CheckpointError naming the missing or extra tensors, or the first bad one with its shape
      and dtype and the expected ones.
    """
    names = optimizer_state_names(config)
    _check_names(tensors, names, what)
    shapes = {s.name: s.shape for s in param_spec(config)}
    out = {}
    for name in names:
        arr = np.asarray(tensors[name])
        want = shapes[name.removeprefix(EXP_AVG_SQ).removeprefix(EXP_AVG)]
        if arr.shape != want or arr.dtype.name != dtype:
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {arr.shape} and dtype {arr.dtype.name}; "
                f"expected shape {want} and dtype {dtype}"
            )
        _check_finite(name, arr, what)
        if name.startswith(EXP_AVG_SQ) and np.any(arr < 0):
            raise CheckpointError(
                f"{what}: tensor {name!r} holds negative values; a second moment is a mean of "
                "squares"
            )
        out[name] = arr
    return out


def check_step(step: Any, what: str = "optimizer state") -> int:
    """``step`` as an int; ``CheckpointError`` unless it is an integer in [0, ``MAX_STEP``]."""
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise CheckpointError(f"{what}: the step count must be an integer, got {step!r}")
    if not 0 <= int(step) <= MAX_STEP:
        raise CheckpointError(f"{what}: the step count must be in [0, {MAX_STEP}], got {int(step)}")
    return int(step)


def check_param_mapping(
    found: Mapping[str, tuple[tuple[int, ...], str]],
    expected: Mapping[str, tuple[int, ...]],
    dtype: str,
    what: str = "params",
) -> None:
    """The check both backends run on a ``params`` argument before applying it.

    Args:
      found: ``{name: (shape, dtype name)}`` of the given mapping, canonical names where the
        backend's layout has one.
      expected: ``{name: shape}`` the model needs (in the backend's layout).
      dtype: the model's dtype name.

    Raises:
      CheckpointError naming every missing and extra key, or the first tensor of the wrong shape
      or dtype.
    """
    _check_names(found, expected, what)
    for name, want in expected.items():
        shape, got = found[name]
        if shape != want or got != dtype:
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {shape} and dtype {got}; expected shape "
                f"{want} and dtype {dtype}"
            )


@functools.lru_cache(maxsize=64)
def spec_shapes(config: VAEConfig) -> Mapping[str, tuple[int, ...]]:
    """``{canonical name: shape}`` of ``config``, read-only and cached (the per-call params checks
    of both backends use it)."""
    return types.MappingProxyType({s.name: s.shape for s in param_spec(config)})
