"""The two convolutions of the conv VAE as lax functions on NHWC arrays, laid out for XLA:CPU.

Both are PyTorch's layers with kernel 4, stride 2, padding 1 (``vae_common.config``):

- ``conv_stride2`` is ``Conv2d``: one ``lax.conv_general_dilated``; its autodiff gradients are fine.
- ``conv_transpose_stride2`` is ``ConvTranspose2d``. The textbook JAX form (``lax.conv_transpose``,
  a convolution with ``lhs_dilation=2``) is very slow on XLA:CPU, above all its kernel gradient
  (~160 ms vs ~17 ms for a 64->32 layer at batch 128 here). Instead:

  * forward: the sub-pixel (phase) decomposition. Output pixel (2m + ry, 2n + rx) only meets
    kernel taps of one parity, so all four output phases are one stride-1 2x2 convolution of the
    input padded by one, with 4 * O output channels, followed by a depth-to-space interleave. No
    dilation, no multiplications by inserted zeros.
  * backward (``jax.custom_vjp``): the input gradient of a transposed convolution is the strided
    convolution of the output gradient with the same kernel, and the kernel gradient is one
    matmul, ``x^T @ patches(g)``, where ``patches`` gathers the 16 stride-2 taps of the padded
    output gradient. Autodiff of the forward would instead emit a large-window convolution for
    the kernel gradient, which XLA:CPU runs ~2x slower than this whole layer.

Every output and gradient element is the same sum of products as PyTorch's, only summed in another
order, so float64 results agree to rounding (~1e-15 relative).

Limitation: a ``custom_vjp`` function supports reverse mode (``grad``, ``vjp``) and ``vmap`` but not
forward mode; ``jax.jvp``/``jax.jacfwd`` through the conv decoder raise a ``TypeError``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_common.config import CONV_KERNEL, CONV_PADDING, CONV_STRIDE

# Activations NHWC, kernels HWIO (kh, kw, in, out).
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# The phase split and the 16-tap patches below are written for this one layer shape.
if (CONV_KERNEL, CONV_STRIDE, CONV_PADDING) != (4, 2, 1):
    raise ImportError("vae_jax._conv assumes kernel 4, stride 2, padding 1")

def _pad1(x):
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def conv_stride2(x, kernel):
    """torch ``Conv2d(k=4, stride=2, padding=1)`` without bias.

    Args:
      x: (B, H, W, C_in), H and W even.
      kernel: (4, 4, C_in, C_out), HWIO (the canonical OIHW weight transposed (2, 3, 1, 0)).

    Returns:
      (B, H/2, W/2, C_out).
    """
    return jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DIMENSION_NUMBERS
    )


def _phase_kernel(kernel):
    """(4, 4, I, O) transposed-conv kernel -> (2, 2, I, 4 O) kernel of its four output phases.

    Output (2m + ry, 2n + rx) is the 2x2 correlation of the input padded by one at (m + ry,
    n + rx) with taps ``kernel[3 - ry - 2 dy, 3 - rx - 2 dx]``, dy, dx in {0, 1}; the phase
    kernel holds that tap at [dy, dx, :, (ry, rx, o)].
    """
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    flipped = kernel[::-1, ::-1].reshape(2, 2, 2, 2, c_in, c_out)  # (dy, ry, dx, rx, I, O)
    return flipped.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c_in, 4 * c_out)


def _conv_transpose_forward(x, kernel):
    b, h, w, _ = x.shape
    c_out = kernel.shape[3]
    phases = jax.lax.conv_general_dilated(
        _pad1(x), _phase_kernel(kernel), (1, 1), "VALID", dimension_numbers=DIMENSION_NUMBERS
    ).reshape(b, h + 1, w + 1, 2, 2, c_out)
    # Phase (ry, rx) of output row block m sits at phases[m + ry, n + rx, ry, rx].
    rows = [
        jnp.stack([phases[:, ry : ry + h, rx : rx + w, ry, rx] for rx in range(2)], axis=3)
        for ry in range(2)
    ]  # each (B, H, W, 2, O)
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c_out)  # (B, H, 2, W, 2, O) -> ...


@jax.custom_vjp
def conv_transpose_stride2(x, kernel):
    """torch ``ConvTranspose2d(k=4, stride=2, padding=1)`` without bias.

    Args:
      x: (B, H, W, I).
      kernel: (4, 4, I, O), the canonical (I, O, kh, kw) weight transposed (2, 3, 0, 1).

    Returns:
      (B, 2H, 2W, O).
    """
    return _conv_transpose_forward(x, kernel)


def _conv_transpose_fwd(x, kernel):
    return _conv_transpose_forward(x, kernel), (x, kernel)


def _conv_transpose_bwd(residuals, g):
    x, kernel = residuals
    # ConvTranspose2d(., K) is the adjoint of Conv2d(., K with in/out swapped), so its input
    # gradient is that strided convolution applied to g, and its kernel gradient is that
    # convolution's kernel gradient at input g and output cotangent x.
    dx, kernel_vjp = jax.vjp(lambda k: conv_stride2(g, k), kernel.transpose(0, 1, 3, 2))
    (dk,) = kernel_vjp(x)
    return dx, dk.transpose(0, 1, 3, 2)


conv_transpose_stride2.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
