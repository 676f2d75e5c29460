"""The two convolutions of the conv VAE as lax functions on NHWC arrays, laid out for XLA:CPU.

Both are PyTorch's layers with kernel 4, stride 2, padding 1 (``vae_common.config``):
``conv_stride2`` is ``Conv2d`` and ``conv_transpose_stride2`` is ``ConvTranspose2d``.

The textbook JAX transposed convolution (``lax.conv_transpose``: a convolution of the input
dilated by 2, ``lhs_dilation``) is slow on XLA:CPU, above all its kernel gradient, and autodiff of
a strided convolution produces that same dilated form for the input gradient. So:

- the transposed convolution's forward is the sub-pixel (phase) decomposition: output pixel
  (2m + ry, 2n + rx) only meets kernel taps of one parity, so all four output phases are one
  stride-1 2x2 convolution of the input padded by one, with 4 * O output channels, followed by a
  depth-to-space interleave. No dilation, no multiplications by inserted zeros.
- the two layers are each other's adjoint in the input, so each one's input gradient is the
  other's forward, written out in a ``jax.custom_vjp``; both kernel gradients are XLA's own
  kernel gradient of the strided convolution (``_conv_kernel_grad``).

Every output and gradient element is the same sum of products as PyTorch's, summed in another
order, so float64 results agree to rounding (~1e-15 relative).

Limitation: ``custom_vjp`` functions support reverse mode (``grad``, ``vjp``), ``jit`` and ``vmap``
but not forward mode: ``jax.jvp``/``jax.jacfwd`` through a conv model raise a ``TypeError``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_common.config import CONV_KERNEL, CONV_PADDING, CONV_STRIDE
from vae_jax._typing import Array

# Activations NHWC, kernels HWIO (kh, kw, in, out).
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# The phase split below is written for this one layer shape.
if (CONV_KERNEL, CONV_STRIDE, CONV_PADDING) != (4, 2, 1):
    raise ImportError("vae_jax._conv assumes kernel 4, stride 2, padding 1")


def _conv_forward(x: Array, kernel: Array) -> Array:
    """(B, H, W, I), (4, 4, I, O) -> (B, H/2, W/2, O)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DIMENSION_NUMBERS
    )


def _conv_kernel_grad(x: Array, g: Array) -> Array:
    """The gradient of ``sum(_conv_forward(x, K) * g)`` in K: (B, H, W, I), (B, H/2, W/2, O) ->
    (4, 4, I, O), as XLA differentiates a strided convolution (its fast path for this one)."""
    shape = jax.ShapeDtypeStruct((4, 4, x.shape[-1], g.shape[-1]), x.dtype)
    (dk,) = jax.linear_transpose(lambda k: _conv_forward(x, k), shape)(g)
    return dk


def _phase_kernel(kernel: Array) -> Array:
    """(4, 4, I, O) transposed-conv kernel -> (2, 2, I, 4 O) kernel of its four output phases.

    Output (2m + ry, 2n + rx) is the 2x2 correlation of the input padded by one at (m + ry,
    n + rx) with taps ``kernel[3 - ry - 2 dy, 3 - rx - 2 dx]``, dy, dx in {0, 1}; the phase
    kernel holds that tap at [dy, dx, :, (ry, rx, o)].
    """
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    flipped = kernel[::-1, ::-1].reshape(2, 2, 2, 2, c_in, c_out)  # (dy, ry, dx, rx, I, O)
    return flipped.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c_in, 4 * c_out)


def _conv_transpose_forward(x: Array, kernel: Array) -> Array:
    """(B, H, W, I), (4, 4, I, O) -> (B, 2H, 2W, O) by the phase decomposition."""
    b, h, w, _ = x.shape
    c_out = kernel.shape[3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = jax.lax.conv_general_dilated(
        padded, _phase_kernel(kernel), (1, 1), "VALID", dimension_numbers=DIMENSION_NUMBERS
    ).reshape(b, h + 1, w + 1, 2, 2, c_out)
    # Phase (ry, rx) of output block (m, n) sits at phases[m + ry, n + rx, ry, rx].
    rows = [
        jnp.stack([phases[:, ry : ry + h, rx : rx + w, ry, rx] for rx in range(2)], axis=3)
        for ry in range(2)
    ]  # each (B, H, W, 2, O)
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c_out)  # (B, H, 2, W, 2, O) -> ...


def _swap_in_out(kernel: Array) -> Array:
    return kernel.transpose(0, 1, 3, 2)


@jax.custom_vjp
def conv_stride2(x: Array, kernel: Array) -> Array:
    """torch ``Conv2d(k=4, stride=2, padding=1)`` without bias.

    Args:
      x: (B, H, W, I), H and W even.
      kernel: (4, 4, I, O), HWIO (the canonical OIHW weight transposed (2, 3, 1, 0)).

    Returns:
      (B, H/2, W/2, O).
    """
    return _conv_forward(x, kernel)


def _conv_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv_forward(x, kernel), (x, kernel)


def _conv_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    return _conv_transpose_forward(g, _swap_in_out(kernel)), _conv_kernel_grad(x, g)


conv_stride2.defvjp(_conv_fwd, _conv_bwd)


@jax.custom_vjp
def conv_transpose_stride2(x: Array, kernel: Array) -> Array:
    """torch ``ConvTranspose2d(k=4, stride=2, padding=1)`` without bias.

    Args:
      x: (B, H, W, I).
      kernel: (4, 4, I, O), the canonical (I, O, kh, kw) weight transposed (2, 3, 0, 1).

    Returns:
      (B, 2H, 2W, O).
    """
    return _conv_transpose_forward(x, kernel)


def _conv_transpose_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv_transpose_forward(x, kernel), (x, kernel)


def _conv_transpose_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    # ConvTranspose2d(., K) is the adjoint of Conv2d(., K with in/out swapped): its input gradient
    # is that convolution of g, its kernel gradient that convolution's kernel gradient at input g
    # and output cotangent x.
    x, kernel = residuals
    dx = _conv_forward(g, _swap_in_out(kernel))
    return dx, _swap_in_out(_conv_kernel_grad(g, x))


conv_transpose_stride2.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
