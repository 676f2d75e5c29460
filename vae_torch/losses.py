"""The negative ELBO and its parts, mirroring ``vae_jax.losses`` formula for formula.

Reductions, the same in both backends:
- per-example functions sum over every pixel (log-likelihoods) or every latent dimension (KL) and
  return shape (B,), in nats;
- with K noise samples per example (eps of shape (K, B, L)) the reconstruction term is the mean
  over the K samples;
- ``loss`` reduces over the batch with ``reduction="mean"`` (default) or ``"sum"``.

Input checks (``vae_torch.input_checks``): shapes and dtypes always; values (``beta``,
``free_bits``, ``std``, the pixels of ``x``) only when they are concrete, not while
``torch.compile`` traces them or a ``torch.func`` transform wraps them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vae_common import checks
from vae_common.constants import LOG_2PI
from vae_common.errors import ConfigError
from vae_torch._typing import Array, ArrayLike, Params
from vae_torch.input_checks import check_loss_inputs, check_setting, check_std
from vae_torch.model import VAE, decode, encode
from vae_torch.sampling import reparameterize

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
    return 0.5 * (mean**2 + torch.expm1(logvar) - logvar)


def gaussian_kl(mean: Array, logvar: Array) -> Array:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) in closed form, summed over latent dims.

    ``-0.5 * sum(1 + logvar - mean^2 - exp(logvar))``: (B, L) -> (B,). ``ShapeError`` unless
    mean and logvar are both (B, L).
    """
    checks.check_posterior("gaussian_kl", np.shape(mean), np.shape(logvar))
    return torch.sum(_kl_per_dim(mean, logvar), dim=-1)


def bernoulli_log_likelihood(x: Array, logits: Array) -> Array:
    """log Bernoulli(x | sigmoid(logits)), summed over all pixels: (B, ...) -> (B,).

    Computed from the logits, stable for any logit; equal to minus the summed
    ``binary_cross_entropy(sigmoid(logits), x)``. ``x`` may be any value in [0, 1] (not checked
    here: the losses check it). ``ShapeError`` unless x is (B, ...) and logits has its shape.
    """
    checks.check_pixels("bernoulli_log_likelihood", np.shape(x), "logits", np.shape(logits))
    return torch.sum(torch.flatten(_bernoulli_terms(x, logits), 1), dim=1)


def _bernoulli_terms(x: Array, logits: Array) -> Array:
    # log p = x*l - softplus(l), computed as minus torch's fused BCE-with-logits,
    # (1 - x) * l - log_sigmoid(l): one kernel forward and one backward (sigmoid(l) - x), stable
    # for any logit, with derivative sigmoid(l) everywhere, also at the kink l = 0 where the
    # max/abs form written out gets 0 or 1 instead of 1/2. It equals JAX's
    # x * l - softplus(l) up to rounding (parity tests, float64). F.softplus is not used: it
    # switches to the identity above 20, which differs from JAX's by 1e-11.
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def gaussian_log_likelihood(x: Array, mean: Array, std: float = 1.0) -> Array:
    """log N(x | mean, std^2 I), summed over all pixels: (B, ...) -> (B,).

    With D pixels, ``-log p = sum((x - mean)^2) / (2 std^2) + D * (log(std) + log(2 pi) / 2)``:
    for std = 1 it is half the summed squared error plus a constant, so minimising it is
    minimising the summed MSE. ``ShapeError`` unless x is (B, ...) and mean has its shape;
    ``ConfigError`` unless std is finite and > 0 (when concrete).
    """
    checks.check_pixels("gaussian_log_likelihood", np.shape(x), "mean", np.shape(mean))
    check_std(std)
    sq = torch.flatten((x - mean) ** 2, 1)
    d = sq.shape[1]
    return -0.5 * torch.sum(sq, dim=1) / std**2 - d * (math.log(std) + 0.5 * LOG_2PI)


def log_likelihood(model: VAE, x: Array, decoded: Array) -> Array:
    """log p(x|z) for the model's likelihood from the decoder output: (B, ...) -> (B,)."""
    cfg = model.config
    if cfg.likelihood == "bernoulli":
        return bernoulli_log_likelihood(x, decoded)
    return gaussian_log_likelihood(x, decoded, cfg.gaussian_std)


def _log_likelihood_terms(model: VAE, x: Array, decoded: Array) -> Array:
    """Per-pixel terms of log p(x|z) that depend on z (constants left out): (B, ...) -> (B, D)."""
    x = torch.flatten(x, 1)
    decoded = torch.flatten(decoded, 1)
    if model.config.likelihood == "bernoulli":
        return _bernoulli_terms(x, decoded)
    return -0.5 * (x - decoded) ** 2 / model.config.gaussian_std**2


def standard_normal_log_density(eps: Array) -> Array:
    """log N(eps | 0, I) summed over the last axis: (..., L) -> (...)."""
    return -0.5 * torch.sum(eps**2 + LOG_2PI, dim=-1)


def _reconstruction_samples(
    model: VAE, params: Params, x: Array, mean: Array, logvar: Array, eps: Array
) -> Array:
    """-log p(x|z_k) for each of the K samples: eps (K, B, L) -> (K, B)."""
    k, b, latent = eps.shape
    z = reparameterize(mean, logvar, eps).reshape(k * b, latent)
    decoded = decode(model, params, z)
    xs = x.unsqueeze(0).expand((k,) + tuple(x.shape)).reshape((k * b,) + tuple(x.shape[1:]))
    return -log_likelihood(model, xs, decoded).reshape(k, b)


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
    samples = eps if eps.ndim == 3 else eps.unsqueeze(0)
    recon = torch.mean(_reconstruction_samples(model, params, x, mean, logvar, samples), dim=0)
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
    return torch.mean(per_example) if reduction == "mean" else torch.sum(per_example)


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
    ``beta`` and ``free_bits`` are still checked): the training step passes it, because on an
    accelerator reading the check's result would synchronise the device every step, and the
    trainers check their data once instead. Under ``torch.compile`` the check is skipped anyway.
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
    kl_dims = torch.mean(gaussian_kl_per_dim(mean, logvar), dim=0)
    return torch.mean(recon) + beta * torch.sum(torch.clamp(kl_dims, min=free_bits))


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
    k, b, latent = eps.shape
    z = reparameterize(mean, logvar, eps)  # (K, B, L)
    decoded = decode(model, params, z.reshape(k * b, latent))  # (K*B, C, H, W)
    xs = x.unsqueeze(0).expand((k,) + tuple(x.shape)).reshape((k * b,) + tuple(x.shape[1:]))
    log_lik = log_likelihood(model, xs, decoded).reshape(k, b)
    # log p(x|z_k) is hundreds of nats; summed in float32 it is off by ~1e-5 nats, an error the
    # softmax weights of the gradient inherit. So the log-weights use log p(x|z_k) minus its mean
    # over the K samples, summed pixel by pixel after the per-pixel mean is subtracted, and that
    # mean is added back outside the logsumexp (the same value in exact arithmetic). The mean is
    # held constant for the gradient (logsumexp(a) = c + logsumexp(a - c) for any c), which
    # leaves exactly sum_k softmax_k * grad log w_k; differentiating through it would add and
    # cancel 1/K terms and lose the precision of small weights.
    terms = _log_likelihood_terms(model, xs, decoded).reshape(k, b, -1)  # (K, B, D)
    centred = torch.sum(terms - torch.mean(terms, dim=0).detach(), dim=-1)  # (K, B)
    log_prior = standard_normal_log_density(z)
    # log q(z|x) with z - mean = std * eps exactly: -0.5 * sum(eps^2 + logvar + log 2 pi).
    log_q = -0.5 * torch.sum(eps**2 + logvar + LOG_2PI, dim=-1)
    log_w = centred + log_prior - log_q
    offset = torch.mean(log_lik, dim=0).detach()
    return -(offset + torch.logsumexp(log_w, dim=0) - math.log(k))
