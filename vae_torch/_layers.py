"""The layers of the PyTorch VAE: dense layers (``nn.Linear`` through oneDNN where that is
faster: ``vae_torch._onednn``), stride-2 convolutions of the config's shape, the widths of
consecutive dense layers, and the cast of a layer's output back to the input's dtype.

The counterpart of ``vae_jax._layers``. Parameters keep PyTorch's own default initialisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from vae_common.config import CONV_KERNEL, CONV_PADDING, CONV_STRIDE
from vae_torch._onednn import linear
from vae_torch._typing import Array


def pairs(widths: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Consecutive pairs (in, out) of a list of layer widths."""
    return zip(widths[:-1], widths[1:], strict=True)


class Linear(nn.Linear):
    """``nn.Linear``: the same parameters, names, initialisation and maths; its product runs
    through oneDNN for eager float32 on the CPU (``vae_torch._onednn.linear``)."""

    def forward(self, x: Array) -> Array:
        return linear(x, self.weight, self.bias)


def conv(c_in: int, c_out: int) -> nn.Conv2d:
    """``Conv2d`` (kernel 4, stride 2, padding 1): (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Conv2d(c_in, c_out, CONV_KERNEL, stride=CONV_STRIDE, padding=CONV_PADDING)


def conv_transpose(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    """``ConvTranspose2d`` (kernel 4, stride 2, padding 1): (B, c_in, H, W) ->
    (B, c_out, 2H, 2W)."""
    return nn.ConvTranspose2d(c_in, c_out, CONV_KERNEL, stride=CONV_STRIDE, padding=CONV_PADDING)


def to_dtype(t: Array, dtype: torch.dtype) -> Array:
    """``t`` in ``dtype``, the same tensor when it already is. Under ``torch.autocast`` (bf16
    training) the layers return bfloat16: the module's outputs go back to the input's dtype, so
    the reparameterization and the losses (and their reductions) run in float32, as in JAX's bf16
    policy (``vae_jax.model.with_precision``)."""
    return t if t.dtype == dtype else t.to(dtype)
