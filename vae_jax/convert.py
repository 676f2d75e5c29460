"""Conversion between Flax parameters and the canonical (PyTorch ``state_dict``) state.

The conversion is one declared table (``conversion_table``): for every canonical tensor, the Flax
path it lives at and the axis permutation between the two layouts. It runs in both directions and
never guesses from names or ranks; any missing, extra or mis-shaped tensor raises with its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from vae_common.checkpoint import CheckpointError, check_state
from vae_common.config import VAEConfig
from vae_common.spec import param_spec
from vae_jax._typing import Params
from vae_jax.model import VAE

# convert.py names that only this backend has (the mirror test reads it): torch's state_dict is
# already canonical.
JAX_ONLY = ("conversion_table", "flax_path")

# Canonical layout -> Flax layout, as a permutation of the canonical axes.
#   Linear.weight (out, in)        -> Dense kernel (in, out)
#   Conv2d.weight (out, in, kh, kw) -> Conv kernel (kh, kw, in, out)       (HWIO)
#   ConvTranspose2d.weight (in, out, kh, kw) -> kernel (kh, kw, in, out), unflipped; the module
#   (``vae_jax._conv.conv_transpose_stride2``) derives the flipped per-phase taps from it, so the
#   stored parameter stays a pure permutation of torch's.
PERMUTATIONS = {
    "linear_weight": (1, 0),
    "conv_weight": (2, 3, 1, 0),
    "conv_transpose_weight": (2, 3, 0, 1),
    "bias": (0,),
}


class Entry(NamedTuple):
    """One row of the table: canonical name, Flax path, permutation canonical -> Flax."""

    name: str
    path: tuple[str, ...]
    permutation: tuple[int, ...]


def flax_path(name: str) -> tuple[str, ...]:
    """``"encoder.hidden.0.weight"`` -> ``("encoder", "hidden_0", "kernel")``."""
    module, leaf = name.rsplit(".", 1)
    top, rest = module.split(".", 1)
    return (top, rest.replace(".", "_"), {"weight": "kernel", "bias": "bias"}[leaf])


def conversion_table(config: VAEConfig) -> list[Entry]:
    """The declared table for ``config``, in canonical order."""
    return [Entry(s.name, flax_path(s.name), PERMUTATIONS[s.kind]) for s in param_spec(config)]


def _flatten(params: Params, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def to_canonical(model: VAE, params: Params) -> dict[str, np.ndarray]:
    """Flax ``params`` -> ``{canonical name: numpy array}`` in PyTorch layouts and spec order."""
    flat = _flatten(params)
    table = conversion_table(model.config)
    expected = {e.path for e in table}
    missing = ["/".join(e.path) for e in table if e.path not in flat]
    extra = sorted("/".join(p) for p in set(flat) - expected)
    if missing or extra:
        raise CheckpointError(
            f"Flax params do not match the config: missing {missing}, extra {extra}"
        )
    state = {}
    for e in table:
        arr = np.asarray(flat[e.path])
        inverse = tuple(int(i) for i in np.argsort(e.permutation))
        state[e.name] = np.array(arr.transpose(inverse), order="C", copy=True)
    check_state(state, model.config, what="Flax params")
    return state


def from_canonical(model: VAE, state: Mapping[str, npt.ArrayLike]) -> dict:
    """``{canonical name: array}`` -> Flax ``params`` of the model's dtype.

    Every name, shape and dtype is checked against the spec first (``CheckpointError``).
    """
    arrays = {k: np.asarray(v) for k, v in state.items()}
    check_state(arrays, model.config)
    params: dict = {}
    for e in conversion_table(model.config):
        node = params
        for key in e.path[:-1]:
            node = node.setdefault(key, {})
        node[e.path[-1]] = jnp.asarray(arrays[e.name].transpose(e.permutation), dtype=model.dtype)
    return params
