"""Conversion between the module and the canonical state.

The module's parameter names and layouts *are* the canonical ones, so this is a checked copy: every
name, shape and dtype is validated against the spec (``CheckpointError`` names the culprit). The
Adam moments of a ``torch.optim.Adam`` go the same way (``adam_state_to_canonical``,
``adam_state_from_canonical``); JAX's live in its train state (``vae_jax.trainer``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch

from vae_common.checkpoint import check_state
from vae_common.training import EXP_AVG, EXP_AVG_SQ, split_optimizer_state
from vae_torch._typing import Params
from vae_torch.model import VAE, _dtype_of

# convert.py names that only this backend has (the mirror test reads it).
TORCH_ONLY = ("adam_state_from_canonical", "adam_state_to_canonical")


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


def adam_state_to_canonical(model: VAE, optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """``optimizer``'s Adam moments under the canonical names (``EXP_AVG`` + parameter name, all
    of them first, then ``EXP_AVG_SQ`` + name), copied to the host; zeros (the model's dtype)
    for a parameter that has no state yet (before the first step)."""
    out = {}
    for name, p in model.named_parameters():
        st = optimizer.state.get(p, {})
        for prefix, key in ((EXP_AVG, "exp_avg"), (EXP_AVG_SQ, "exp_avg_sq")):
            value = st.get(key)
            out[prefix + name] = (
                torch.zeros_like(p, device="cpu").numpy()
                if value is None
                else value.detach().cpu().numpy().copy()
            )
    return dict(sorted(out.items(), key=lambda kv: kv[0].startswith(EXP_AVG_SQ)))


def adam_state_from_canonical(
    model: VAE, optimizer: torch.optim.Optimizer, tensors: Mapping[str, np.ndarray], step: int
) -> None:
    """Set ``optimizer``'s state to the canonical Adam moments ``tensors`` (checked against the
    spec, ``vae_common.training.split_optimizer_state``) after ``step`` steps: fresh tensors
    on each parameter's device, the step count where the optimizer's kernel reads it (on the
    device for the fused or capturable kernels, on the host otherwise)."""
    mu, nu = split_optimizer_state(dict(tensors), model.config)
    group = optimizer.param_groups[0]
    on_device = bool(group.get("fused") or group.get("capturable"))
    for name, p in model.named_parameters():
        step_t = torch.tensor(float(step), dtype=torch.float32)
        optimizer.state[p] = {
            "step": step_t.to(p.device) if on_device else step_t,
            "exp_avg": torch.as_tensor(mu[name], dtype=p.dtype, device=p.device).clone(),
            "exp_avg_sq": torch.as_tensor(nu[name], dtype=p.dtype, device=p.device).clone(),
        }
