"""Evaluation over a dataset with shared, seeded noise: the loop both backends' trainers use.

The backend supplies two batch functions; the noise and the sums happen here in numpy, so one
checkpoint evaluated by the two backends sees exactly the same noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vae_common.batches import standard_normal
from vae_common.errors import ConfigError, DataError

# Examples x samples decoded at once by the IWAE evaluation (bounds memory).
IWAE_CHUNK = 50_000


def evaluate_batches(
    batch_terms: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    batch_iwae: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    latent_dim: int,
    dtype: str,
    seed: int = 0,
    batch_size: int = 500,
    iwae_k: int = 0,
) -> dict:
    """Mean -ELBO, its two terms and, for ``iwae_k > 1``, the IWAE estimate of -log p(x).

    Args:
      batch_terms: ``(x (b, C, H, W), eps (b, L)) -> (reconstruction (b,), kl (b,))``.
      batch_iwae: ``(x (b, C, H, W), eps (K, b, L)) -> negative IWAE bound (b,)``.
      x: the images (N, C, H, W).
      seed: noise for batch j is ``standard_normal(seed, 2j, ...)`` (ELBO) and
        ``standard_normal(seed, 2j + 1, ...)`` (IWAE).

    Returns:
      ``{"neg_elbo", "reconstruction", "kl", "neg_iwae", "iwae_k", "n"}``: means over the N
      examples, in nats per example. ``neg_elbo`` is the negative ELBO and ``neg_iwae`` the
      negative IWAE bound (lower is better; it estimates -log p(x)), None unless ``iwae_k > 1``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if iwae_k < 0 or iwae_k == 1 or iwae_k > IWAE_CHUNK:
        # 0 is "no IWAE"; a negative count or one sample (the ELBO again) is not a bound asked
        # for, and more than IWAE_CHUNK samples of one example would be decoded at once.
        raise ConfigError(
            f"iwae_k must be 0 (no IWAE) or in [2, {IWAE_CHUNK}], got {iwae_k} (the upper limit "
            "is vae_common.evaluation.IWAE_CHUNK, the samples decoded at once)"
        )
    n = len(x)
    if n == 0:
        raise DataError("cannot evaluate on an empty dataset")
    recon, kl = np.zeros(n), np.zeros(n)
    for j, start in enumerate(range(0, n, batch_size)):
        xb = x[start : start + batch_size]
        eps = standard_normal(seed, 2 * j, (len(xb), latent_dim), dtype)
        r, k = batch_terms(xb, eps)
        recon[start : start + len(xb)], kl[start : start + len(xb)] = r, k
    out = {
        "neg_elbo": float(np.mean(recon + kl)),
        "reconstruction": float(np.mean(recon)),
        "kl": float(np.mean(kl)),
        "neg_iwae": None,
        "iwae_k": int(iwae_k),
        "n": int(n),
    }
    if iwae_k > 1:
        chunk = max(1, min(batch_size, IWAE_CHUNK // iwae_k))
        bound = np.zeros(n)
        for j, start in enumerate(range(0, n, chunk)):
            xb = x[start : start + chunk]
            eps = standard_normal(seed, 2 * j + 1, (iwae_k, len(xb), latent_dim), dtype)
            bound[start : start + len(xb)] = batch_iwae(xb, eps)
        out["neg_iwae"] = float(np.mean(bound))
    return out
