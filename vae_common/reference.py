"""Closed forms in plain numpy (float64), the third opinion both backends are checked against.

Reductions match the backends: every function returns one value per example, summed over pixels
(or latent dimensions), with the batch as the leading axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vae_common.config import VAEConfig
from vae_common.constants import LOG_2PI


def gaussian_kl(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example: (B, L) -> (B,)."""
    return -0.5 * np.sum(1.0 + logvar - mean**2 - np.exp(logvar), axis=-1)


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


def bernoulli_log_likelihood(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """log Bernoulli(x | sigmoid(logits)) summed per example: (B, ...) -> (B,).

    Written as ``x*log(p) + (1-x)*log(1-p)`` on the probabilities, deliberately a different
    formula from the backends' logit form, so agreement is a real check (moderate logits only).
    """
    p = 1.0 / (1.0 + np.exp(-logits))
    return np.sum(_flat(x * np.log(p) + (1.0 - x) * np.log1p(-p)), axis=1)


def gaussian_log_likelihood(x: np.ndarray, mean: np.ndarray, std: float = 1.0) -> np.ndarray:
    """log N(x | mean, std^2 I) summed per example: (B, ...) -> (B,)."""
    d = _flat(x).shape[1]
    sse = np.sum(_flat((x - mean) ** 2), axis=1)
    return -0.5 * sse / std**2 - d * (np.log(std) + 0.5 * LOG_2PI)


def mlp_forward(
    state: Mapping[str, np.ndarray], config: VAEConfig, x: np.ndarray, eps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MLP VAE in numpy: returns (decoded, mean, logvar) for x (B, C, H, W), eps (B, L)."""

    def dense(h: np.ndarray, name: str) -> np.ndarray:
        return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    h = _flat(x)
    for i in range(len(config.hidden)):
        h = np.maximum(dense(h, f"encoder.hidden.{i}"), 0.0)
    mean, logvar = dense(h, "encoder.mean"), dense(h, "encoder.logvar")
    h = mean + np.exp(0.5 * logvar) * eps
    for i in range(len(config.hidden)):
        h = np.maximum(dense(h, f"decoder.hidden.{i}"), 0.0)
    out = dense(h, "decoder.out").reshape((x.shape[0],) + config.input_shape)
    return out, mean, logvar


def negative_elbo_terms(
    state: Mapping[str, np.ndarray], config: VAEConfig, x: np.ndarray, eps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, kl), each (B,), for the MLP VAE with one noise sample per example."""
    out, mean, logvar = mlp_forward(state, config, x, eps)
    if config.likelihood == "bernoulli":
        recon = -bernoulli_log_likelihood(x, out)
    else:
        recon = -gaussian_log_likelihood(x, out, config.gaussian_std)
    return recon, gaussian_kl(mean, logvar)
