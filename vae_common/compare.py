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
}
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
