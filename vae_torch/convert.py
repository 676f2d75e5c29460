"""Conversion between the module and the canonical state.

The module's parameter names and layouts *are* the canonical ones, so this is a checked copy: every
name, shape and dtype is validated against the spec (``CheckpointError`` names the culprit).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch

from vae_common.checkpoint import check_state
from vae_torch._typing import Params
from vae_torch.model import VAE, _dtype_of


def to_canonical(model: VAE, params: Params) -> dict[str, np.ndarray]:
    """``{canonical name: numpy array}`` from ``params`` (a name -> tensor mapping, or None for
    the module's own parameters), in spec order, copied to the host."""
    source = dict(model.named_parameters()) if params is None else dict(params)
    state = {k: v.detach().cpu().numpy().copy() for k, v in source.items()}
    check_state(state, model.config, what="torch params")
    return state


def from_canonical(model: VAE, state: Mapping[str, npt.ArrayLike]) -> dict[str, torch.Tensor]:
    """Load a canonical state into ``model`` (cast to its dtype, on its device).

    Returns:
      ``dict(model.named_parameters())``.
    """
    arrays = {k: np.asarray(v) for k, v in state.items()}
    check_state(arrays, model.config)
    dtype = _dtype_of(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.as_tensor(arrays[name], dtype=dtype))
    return dict(model.named_parameters())
