"""Contracts of the shared data code (``vae_common.batches``, ``sources``, ``layout``,
``datasets``, ``idx``, ``npz``, ``data``) at their edges, each against a value computed here.

Each test pins an edge a generic mutation run found unpinned: a comparison's boundary, a limit,
a default. Numpy only, fast.
"""

from __future__ import annotations

import numpy as np

from vae_common.batches import binarize, last_batch_indices


def test_binarization_is_one_exactly_when_the_draw_is_below_the_intensity():
    """A pixel is 1 iff its uniform draw u (``rng.random(shape, float32)``, in [0, 1)) is
    strictly below its intensity p, so P(1) = P(u < p) = p: a pixel whose intensity equals its
    draw is 0, one a float32 ulp above it is 1 (``u <= p`` would make P(1) = p + 2**-24 on the
    float32 grid, and intensity 0 sometimes 1)."""
    draws = np.random.default_rng(3).random((4, 1, 5, 5), dtype=np.float32)
    assert not np.any(binarize(draws.copy(), np.random.default_rng(3)))
    above = np.nextafter(draws, np.float32(2))
    assert np.all(binarize(above, np.random.default_rng(3)) == 1)


def test_batches_of_one_leave_no_last_batch():
    """Batch size 1 is a valid size: every example is a full batch, none is left over."""
    assert last_batch_indices(5, 1, seed=0, epoch=1).shape == (0,)
    assert last_batch_indices(5, 1, seed=0, epoch=1, shuffle=False).tolist() == []
