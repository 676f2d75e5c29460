"""Type aliases of the torch backend, for annotations (``vae_jax._typing`` has the same names)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy.typing as npt
import torch

# What the functions return.
Array = torch.Tensor
# What they accept where the JAX twin accepts any array: the maths runs on tensors; numpy arrays
# (and anything ``torch.as_tensor`` takes) are converted by the input checks of ``model.py``.
ArrayLike = torch.Tensor | npt.ArrayLike
# A dtype argument: "float32" / "float64", a numpy dtype or a torch dtype (``resolve_dtype``).
DTypeLike = npt.DTypeLike | torch.dtype
# Parameters by canonical name, or None for the module's own (applied with
# ``torch.func.functional_call``).
Params = Mapping[str, torch.Tensor] | None

__all__ = ["Array", "ArrayLike", "DTypeLike", "Params"]
