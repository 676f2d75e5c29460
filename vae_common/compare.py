"""How parity is measured: one relative-difference definition and one tolerance table.

Both the parity tests and ``vae parity`` use these, so a figure printed by the tool means the
same thing as an assertion in the tests.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vae_common.errors import ShapeError

# The one tolerance table: maximum relative difference allowed between the two backends.
TOLERANCES = {
    "float64": 1e-12,
    "float32": 1e-5,
    # The bf16 training precision (``vae_common.precision``), float32 parameters: one bfloat16
    # unit roundoff, u = 2**-8 (8 significand bits), on the loss and the per-example
    # reconstruction and objective (``BF16_JUDGED``). Why u: both backends round the same float32
    # inputs and weights to the same bfloat16 values and sum the (exact) products in float32,
    # but they round a layer's output at different places (torch adds the bias inside the
    # product and rounds once; Flax rounds the product, then the sum), so the two carry
    # independent errors of up to u/2 in every layer output. The reconstruction term is a sum of
    # per-pixel terms whose slope in the logit is sigmoid(l) - x, in [-1, 1]: each backend's
    # value is off by at most about u/2 of its size, the two by about u, and the batch mean by
    # less (rounding errors of opposite signs cancel, unless training made them coherent). What
    # it catches: any difference in the maths (a layer, a cast, an activation), which moves the
    # loss by far more than u. Not judged, because bfloat16 makes them differ by several per
    # cent with no bug (README): the per-example KL (20 dimensions of mean**2 + expm1(lv) - lv
    # from rounded mean and logvar, a near-cancelling sum at logvar ~ 0) and the gradients
    # (batch sums that cancel; a ReLU unit at the edge of 0 is on in one backend, off in the
    # other). That both losses are float32 is tested apart (``loss_dtype`` of each side).
    "bf16": 2.0**-8,
}
# What the bf16 parity check judges against TOLERANCES["bf16"] (names of the parity report).
BF16_JUDGED = ("loss", "reconstruction", "objective")
# After N Adam steps from the same start, batches and noise, in float64: every parameter, every
# per-step loss and a final gradient must agree this well. In float32 only the per-step losses are
# judged (against TOLERANCES): Adam divides by sqrt(v), so float32 rounding in the near-zero
# gradients of barely-active units becomes a full-size, sign-flipped step, and single parameters
# drift apart (far beyond any tolerance after 100 steps; figures in the README) while the loss
# curves stay equal.
TRAJECTORY_TOLERANCES = {
    "float64": 1e-9,
}


def max_abs_diff(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ShapeError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def rel_diff(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """``max|a - b| / max|b|`` over the elements (``|a - b| / |b|`` for scalars).

    ``b`` is the reference. When ``b`` is all zeros the absolute difference is returned, so two
    all-zero tensors compare as 0 and anything else as its own size.
    """
    diff = max_abs_diff(a, b)
    scale = float(np.max(np.abs(np.asarray(b, dtype=np.float64)))) if np.size(b) else 0.0
    return diff / scale if scale > 0 else diff
