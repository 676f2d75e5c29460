"""What both backends draw from one seed: the batches of an epoch (``batch_indices``,
``last_batch_indices``), the stochastic binarization and N(0, 1) noise; and ``check_batches``,
the check of the batch indices a trainer is given.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vae_common.errors import DataError, ShapeError


def binarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic binarization: each pixel is 1 with probability equal to its intensity.

    Static binarization calls this once with a fixed seed; dynamic binarization calls it afresh
    every epoch (the training loops draw it on the device instead).
    """
    return (rng.random(x.shape, dtype=np.float32) < x).astype(x.dtype)


def batch_indices(
    n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> np.ndarray:
    """Indices of the training batches of one epoch, shape (n // batch_size, batch_size).

    A permutation drawn from ``(seed, epoch)`` (or the identity when ``shuffle`` is False), cut
    into full batches, so every step of an epoch has the same shape (one compiled step, one
    ``lax.scan``). The ``n % batch_size`` examples left over are ``last_batch_indices``. Both
    backends use this.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if n < batch_size:
        raise DataError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
    steps = n // batch_size
    return _epoch_order(n, seed, epoch, shuffle)[: steps * batch_size].reshape(steps, batch_size)


def last_batch_indices(
    n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> np.ndarray:
    """The indices ``batch_indices`` leaves out: the last ``n % batch_size`` of the epoch's
    permutation, shape (n % batch_size,), empty when the batches cover the data.

    ``vae train`` runs them as one more, smaller step after the epoch's full batches (unless
    ``--drop-last``), so every example is used once per epoch.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if n < batch_size:
        raise DataError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
    return _epoch_order(n, seed, epoch, shuffle)[(n // batch_size) * batch_size :]


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def standard_normal(
    seed: int, stream: int, shape: tuple[int, ...], dtype: str = "float64"
) -> np.ndarray:
    """Seeded N(0, 1) noise both backends share: one ``(seed, stream)``, one array."""
    return np.random.default_rng([seed, stream]).standard_normal(shape).astype(dtype)


def check_batches(batches: npt.ArrayLike, n: int, wide: bool = False) -> np.ndarray:
    """``batches`` as an (S, B) integer array (int32, or int64 with ``wide``) of indices into
    ``n`` samples; a ShapeError naming the problem otherwise (the trainers call it, so a bad
    index is refused before any step instead of being clamped or failing deep inside)."""
    batches = np.asarray(batches)
    if batches.ndim != 2 or not np.issubdtype(batches.dtype, np.integer):
        raise ShapeError(
            f"batches must be an (steps, batch) integer array, got shape {batches.shape} "
            f"and dtype {batches.dtype}"
        )
    if batches.size and (batches.min() < 0 or batches.max() >= n):
        raise ShapeError(
            f"batches holds indices in [{batches.min()}, {batches.max()}] but data has {n} samples"
        )
    return batches.astype(np.int64 if wide else np.int32)
