"""The negative ELBO and its parts, as pure functions.

Reductions, the same in both backends:
- per-example functions sum over every pixel (log-likelihoods) or every latent dimension (KL) and
  return shape (B,), in nats;
- with K noise samples per example (eps of shape (K, B, L)) the reconstruction term is the mean
  over the K samples;
- ``loss`` reduces over the batch with ``reduction="mean"`` (default) or ``"sum"``.

The per-example maths is written for one example and batched with ``jax.vmap``.

Input checks (``vae_jax.input_checks``): shapes and dtypes always, also under ``jax.jit``; values
(``beta``, ``free_bits``, ``std``, the pixels of ``x``) only when they are concrete, not while
``jax.jit`` traces them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_common import checks
from vae_common.constants import LOG_2PI
from vae_common.errors import ConfigError
from vae_jax._typing import Array, ArrayLike, Params
from vae_jax.input_checks import check_loss_inputs, check_setting, check_std
from vae_jax.model import VAE, decode, encode
from vae_jax.sampling import reparameterize

REDUCTIONS = ("mean", "sum")


def gaussian_kl_per_dim(mean: Array, logvar: Array) -> Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each latent dimension: (B, L) -> (B, L), in nats.

    ``-0.5 * (1 + logvar - mean^2 - exp(logvar))`` elementwise; ``gaussian_kl`` sums it.
    ``ShapeError`` unless mean and logvar are both (B, L).
    """
    checks.check_posterior("gaussian_kl_per_dim", np.shape(mean), np.shape(logvar))
    return _kl_per_dim(mean, logvar)


def _kl_per_dim(mean: Array, logvar: Array) -> Array:
    # Rearranged with expm1: it keeps float32 accurate near the prior (logvar ~ 0), where
    # 1 + logvar - exp(logvar) cancels to noise.
    return 0.5 * (mean**2 + jnp.expm1(logvar) - logvar)


def gaussian_kl(mean: Array, logvar: Array) -> Array:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) in closed form, summed over latent dims.

    ``-0.5 * sum(1 + logvar - mean^2 - exp(logvar))``: (B, L) -> (B,). ``ShapeError`` unless
    mean and logvar are both (B, L).
    """
    checks.check_posterior("gaussian_kl", np.shape(mean), np.shape(logvar))
    return jax.vmap(lambda m, lv: jnp.sum(_kl_per_dim(m, lv)))(mean, logvar)


@jax.custom_jvp
def _softplus(logits: Array) -> Array:
    # softplus(l) = log(1 + e^l) = max(l, 0) + log1p(exp(-|l|)): never overflows. Written out
    # rather than jnp.logaddexp(0, l), which has the same values (bit for bit on 100,001 logits
    # in [-40, 40], float32 and float64), because XLA:CPU runs this form about twice as fast
    # forward and four times as fast backward (128 x 784 logits: ~150 vs ~300 us forward, ~95
    # vs ~360 us for the gradient), ~10% of a training step.
    return jnp.maximum(logits, 0) + jnp.log1p(jnp.exp(-jnp.abs(logits)))


@_softplus.defjvp
def _softplus_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    # The derivative is sigmoid(l) everywhere, also at the kink l = 0 where differentiating
    # the max/abs form would give 1/2 only by the tie rule of jnp.maximum (torch's relu-style
    # rules give 0 or 1): stated here, not left to the rules.
    (logits,), (t,) = primals, tangents
    return _softplus(logits), jax.nn.sigmoid(logits) * t


def _bernoulli_terms(x: Array, logits: Array) -> Array:
    # log p = x*l - softplus(l), stable for any logit, derivative x - sigmoid(l).
    return x * logits - _softplus(logits)


def _bernoulli_one(x: Array, logits: Array) -> Array:
    return jnp.sum(_bernoulli_terms(x, logits))


def bernoulli_log_likelihood(x: Array, logits: Array) -> Array:
    """log Bernoulli(x | sigmoid(logits)), summed over all pixels: (B, ...) -> (B,).

    Computed from the logits, stable for any logit; equal to minus the summed
    ``binary_cross_entropy(sigmoid(logits), x)``. ``x`` may be any value in [0, 1] (not checked
    here: the losses check it). ``ShapeError`` unless x is (B, ...) and logits has its shape.
    """
    checks.check_pixels("bernoulli_log_likelihood", np.shape(x), "logits", np.shape(logits))
    return jax.vmap(_bernoulli_one)(x, logits)


def gaussian_log_likelihood(x: Array, mean: Array, std: float = 1.0) -> Array:
    """log N(x | mean, std^2 I), summed over all pixels: (B, ...) -> (B,).

    With D pixels, ``-log p = sum((x - mean)^2) / (2 std^2) + D * (log(std) + log(2 pi) / 2)``:
    for std = 1 it is half the summed squared error plus a constant, so minimising it is
    minimising the summed MSE. ``ShapeError`` unless x is (B, ...) and mean has its shape;
    ``ConfigError`` unless std is finite and > 0 (when concrete).
    """
    checks.check_pixels("gaussian_log_likelihood", np.shape(x), "mean", np.shape(mean))
    check_std(std)

    def one(x1: Array, m1: Array) -> Array:
        d = x1.size
        return -0.5 * jnp.sum((x1 - m1) ** 2) / std**2 - d * (math.log(std) + 0.5 * LOG_2PI)

    return jax.vmap(one)(x, mean)


def log_likelihood(model: VAE, x: Array, decoded: Array) -> Array:
    """log p(x|z) for the model's likelihood from the decoder output: (B, ...) -> (B,)."""
    cfg = model.config
    if cfg.likelihood == "bernoulli":
        return bernoulli_log_likelihood(x, decoded)
    return gaussian_log_likelihood(x, decoded, cfg.gaussian_std)


def _log_likelihood_terms(model: VAE, x: Array, decoded: Array) -> Array:
    """Per-pixel terms of log p(x|z) that depend on z (constants left out): (B, ...) -> (B, D)."""
    x = x.reshape(x.shape[0], -1)
    decoded = decoded.reshape(decoded.shape[0], -1)
    if model.config.likelihood == "bernoulli":
        return _bernoulli_terms(x, decoded)
    return -0.5 * (x - decoded) ** 2 / model.config.gaussian_std**2


def standard_normal_log_density(eps: Array) -> Array:
    """log N(eps | 0, I) summed over the last axis: (..., L) -> (...)."""
    return -0.5 * jnp.sum(eps**2 + LOG_2PI, axis=-1)


def _reconstruction_samples(
    model: VAE, params: Params, x: Array, mean: Array, logvar: Array, eps: Array
) -> Array:
    """-log p(x|z_k) for each of the K samples: eps (K, B, L) -> (K, B)."""
    z = reparameterize(mean, logvar, eps)
    return jax.vmap(lambda zk: -log_likelihood(model, x, decode(model, params, zk)))(z)


def elbo_terms(model: VAE, params: Params, x: ArrayLike, eps: ArrayLike) -> tuple[Array, Array]:
    """The two terms of the negative ELBO, per example.

    Args:
      x: (B, C, H, W) images, B >= 1: finite, and in [0, 1] for the Bernoulli likelihood
        (``DataError`` otherwise, when x is concrete).
      eps: (B, L) noise, or (K, B, L) for K >= 1 samples per example.

    Returns:
      ``(reconstruction, kl)``, each (B,) in nats: ``-log p(x|z)`` (averaged over the K samples)
      and the closed-form ``KL(q(z|x) || N(0, I))``.
    """
    return _elbo_terms(model, params, x, eps, True)


def _elbo_terms(
    model: VAE, params: Params, x: ArrayLike, eps: ArrayLike, check_values: bool
) -> tuple[Array, Array]:
    x, eps = check_loss_inputs(model, x, eps, check_values)
    mean, logvar = encode(model, params, x)
    if eps.ndim == 2:
        # One sample: decoded directly, not as a K = 1 vmap, whose batched dots (and the
        # transposes XLA adds for their gradients) make a training step ~20% slower on CPU.
        recon = -log_likelihood(model, x, decode(model, params, reparameterize(mean, logvar, eps)))
    else:
        recon = jnp.mean(_reconstruction_samples(model, params, x, mean, logvar, eps), axis=0)
    return recon, gaussian_kl(mean, logvar)


def negative_elbo(
    model: VAE, params: Params, x: ArrayLike, eps: ArrayLike, beta: float = 1.0
) -> Array:
    """``reconstruction + beta * kl`` per example, (B,) in nats (see ``elbo_terms``);
    ``ConfigError`` unless beta is finite and >= 0 (when concrete)."""
    return _negative_elbo(model, params, x, eps, beta, True)


def _negative_elbo(
    model: VAE, params: Params, x: ArrayLike, eps: ArrayLike, beta: Any, check_values: bool
) -> Array:
    check_setting("beta", beta)
    recon, kl = _elbo_terms(model, params, x, eps, check_values)
    return recon + beta * kl


def loss(
    model: VAE,
    params: Params,
    x: ArrayLike,
    eps: ArrayLike,
    beta: float = 1.0,
    reduction: str = "mean",
) -> Array:
    """The training objective: the negative ELBO summed over pixels and latents, then reduced
    over the batch by ``reduction`` (``"mean"``, the default, or ``"sum"``). A scalar.
    """
    return _loss(model, params, x, eps, beta, reduction, True)


def _loss(
    model: VAE,
    params: Params,
    x: ArrayLike,
    eps: ArrayLike,
    beta: Any,
    reduction: str,
    check_values: bool,
) -> Array:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    per_example = _negative_elbo(model, params, x, eps, beta, check_values)
    return jnp.mean(per_example) if reduction == "mean" else jnp.sum(per_example)


def objective(
    model: VAE,
    params: Params,
    x: ArrayLike,
    eps: ArrayLike,
    beta: float = 1.0,
    free_bits: float = 0.0,
    *,
    check_values: bool = True,
) -> Array:
    """The training loss, a scalar: the batch mean of ``reconstruction + beta * KL``.

    With ``free_bits > 0`` (nats per latent dimension, Kingma et al. 2016) the KL term is
    ``sum_j max(free_bits, mean_batch KL_j)`` with ``KL_j`` from ``gaussian_kl_per_dim``: the
    batch mean is taken per dimension first, then floored, then summed. ``eps`` is (B, L). With
    ``free_bits == 0`` this is exactly ``loss(..., reduction="mean")``.

    ``check_values=False`` skips the check of x's values (see ``elbo_terms``; shapes, dtypes,
    ``beta`` and ``free_bits`` are still checked): torch's training step passes it, because on
    an accelerator reading the check's result would synchronise the device every step, and the
    trainers check their data once instead. Under ``jax.jit`` the check is skipped anyway.
    """
    check_setting("free_bits", free_bits)
    if free_bits == 0:
        return _loss(model, params, x, eps, beta, "mean", check_values)
    check_setting("beta", beta)
    x, eps = check_loss_inputs(
        model, x, eps, check_values, ndim=2, fn="objective with free_bits > 0"
    )
    mean, logvar = encode(model, params, x)
    recon = -log_likelihood(model, x, decode(model, params, reparameterize(mean, logvar, eps)))
    kl_dims = jnp.mean(gaussian_kl_per_dim(mean, logvar), axis=0)
    return jnp.mean(recon) + beta * jnp.sum(jnp.maximum(free_bits, kl_dims))


def negative_iwae_bound(model: VAE, params: Params, x: ArrayLike, eps: ArrayLike) -> Array:
    """Minus the importance-weighted bound on log p(x) (Burda et al.), per example, in nats.

    ``-(logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K)`` with
    ``z_k = mean + exp(logvar/2) * eps_k``. It is at most ``negative_elbo`` in expectation and
    tends to ``-log p(x)`` as K grows.

    Args:
      x: (B, C, H, W), as for ``elbo_terms``; eps: (K, B, L), K >= 1.

    Returns:
      (B,).
    """
    x, eps = check_loss_inputs(model, x, eps, ndim=3, fn="negative_iwae_bound")
    mean, logvar = encode(model, params, x)
    z = reparameterize(mean, logvar, eps)  # (K, B, L)
    decoded = jax.vmap(lambda zk: decode(model, params, zk))(z)  # (K, B, C, H, W)
    log_lik = jax.vmap(lambda d: log_likelihood(model, x, d))(decoded)  # (K, B)
    # log p(x|z_k) is hundreds of nats; summed in float32 it is off by ~1e-5 nats, an error the
    # softmax weights of the gradient inherit. So the log-weights use log p(x|z_k) minus its mean
    # over the K samples, summed pixel by pixel after the per-pixel mean is subtracted, and that
    # mean is added back outside the logsumexp (the same value in exact arithmetic). The mean is
    # held constant for the gradient (logsumexp(a) = c + logsumexp(a - c) for any c), which
    # leaves exactly sum_k softmax_k * grad log w_k; differentiating through it would add and
    # cancel 1/K terms and lose the precision of small weights.
    terms = jax.vmap(lambda d: _log_likelihood_terms(model, x, d))(decoded)  # (K, B, D)
    centred = jnp.sum(terms - jax.lax.stop_gradient(jnp.mean(terms, axis=0)), axis=-1)  # (K, B)
    log_prior = standard_normal_log_density(z)
    # log q(z|x) with z - mean = std * eps exactly: -0.5 * sum(eps^2 + logvar + log 2 pi).
    log_q = -0.5 * jnp.sum(eps**2 + logvar + LOG_2PI, axis=-1)
    log_w = centred + log_prior - log_q
    k = eps.shape[0]
    offset = jax.lax.stop_gradient(jnp.mean(log_lik, axis=0))
    return -(offset + jax.scipy.special.logsumexp(log_w, axis=0) - math.log(k))
