"""Closed forms in plain numpy (float64), the third opinion both backends are checked against.

Reductions match the backends: every function returns one value per example, summed over pixels
(or latent dimensions), with the batch as the leading axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vae_common.config import VAEConfig
from vae_common.constants import LOG_2PI
from vae_common.training import TrainConfig


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


def _dense(state: dict, name: str, h: np.ndarray) -> np.ndarray:
    return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def _softplus(a: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, a)


def _mlp_decode(state: dict, config: VAEConfig, z: np.ndarray) -> np.ndarray:
    """Decoder output (logits or Gaussian mean), flat: z (B, L) -> (B, D)."""
    h = z
    for i in range(len(config.hidden)):
        h = np.maximum(_dense(state, f"decoder.hidden.{i}", h), 0.0)
    return _dense(state, "decoder.out", h)


def kl_weight(beta: float, warmup_steps: int, step: int) -> float:
    """The KL weight of 0-based step ``step``: ``beta * min(1, step / warmup_steps)`` (``beta``
    when ``warmup_steps`` is 0)."""
    return beta if warmup_steps == 0 else beta * min(1.0, step / warmup_steps)


def mlp_objective_and_grads(
    state: dict[str, np.ndarray],
    config: VAEConfig,
    x: np.ndarray,
    eps: np.ndarray,
    beta: float = 1.0,
    free_bits: float = 0.0,
) -> tuple[float, dict[str, np.ndarray]]:
    """The training objective of the MLP VAE and its gradient, forward and backward by hand.

    ``objective = mean_b recon_b + beta * K`` with ``K = mean_b sum_j KL_bj`` when
    ``free_bits == 0`` and ``K = sum_j max(free_bits, mean_b KL_bj)`` otherwise (per latent
    dimension j, ``KL_bj = (mean^2 + exp(logvar) - 1 - logvar) / 2``).

    Args:
      state: canonical weights (``{name: array}``, PyTorch layouts).
      x: (B, C, H, W) images; eps: (B, L) noise.

    Returns:
      the scalar objective and ``{name: gradient}`` of the same shapes as ``state``.
    """
    b = x.shape[0]
    grads: dict[str, np.ndarray] = {}

    def dense_backward(name: str, inp: np.ndarray, dout: np.ndarray) -> np.ndarray:
        grads[f"{name}.weight"] = dout.T @ inp
        grads[f"{name}.bias"] = dout.sum(axis=0)
        return dout @ state[f"{name}.weight"]

    target = _flat(x)
    enc_in = [target]
    for i in range(len(config.hidden)):
        enc_in.append(np.maximum(_dense(state, f"encoder.hidden.{i}", enc_in[-1]), 0.0))
    h = enc_in[-1]
    mean, logvar = _dense(state, "encoder.mean", h), _dense(state, "encoder.logvar", h)
    std = np.exp(0.5 * logvar)
    dec_in = [mean + std * eps]
    for i in range(len(config.hidden)):
        dec_in.append(np.maximum(_dense(state, f"decoder.hidden.{i}", dec_in[-1]), 0.0))
    out = _dense(state, "decoder.out", dec_in[-1])
    if config.likelihood == "bernoulli":
        recon = np.sum(_softplus(out) - target * out, axis=1)
        d_out = (1.0 / (1.0 + np.exp(-out)) - target) / b
    else:
        var = config.gaussian_std**2
        d = target.shape[1]
        recon = 0.5 * np.sum((target - out) ** 2, axis=1) / var + d * (
            np.log(config.gaussian_std) + 0.5 * LOG_2PI
        )
        d_out = (out - target) / var / b
    kl = 0.5 * (mean**2 + np.exp(logvar) - 1.0 - logvar)  # (B, L)
    if free_bits == 0:
        kl_term = float(np.mean(np.sum(kl, axis=1)))
        kl_scale = np.full(kl.shape[1], beta / b)
    else:
        per_dim = np.mean(kl, axis=0)
        kl_term = float(np.sum(np.maximum(free_bits, per_dim)))
        kl_scale = np.where(per_dim > free_bits, beta / b, 0.0)
    value = float(np.mean(recon)) + beta * kl_term

    d_h = dense_backward("decoder.out", dec_in[-1], d_out)
    for i in reversed(range(len(config.hidden))):
        d_h = dense_backward(f"decoder.hidden.{i}", dec_in[i], d_h * (dec_in[i + 1] > 0))
    d_mean = d_h + kl_scale * mean
    d_logvar = d_h * eps * 0.5 * std + kl_scale * 0.5 * (np.exp(logvar) - 1.0)
    d_enc = dense_backward("encoder.mean", h, d_mean) + dense_backward(
        "encoder.logvar", h, d_logvar
    )
    for i in reversed(range(len(config.hidden))):
        d_enc = dense_backward(f"encoder.hidden.{i}", enc_in[i], d_enc * (enc_in[i + 1] > 0))
    return value, {name: grads[name] for name in state}


def adam_update(
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    moments: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    count: int,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
) -> tuple[dict[str, np.ndarray], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """One Adam step (Kingma and Ba, Algorithm 1): ``count`` is the 1-based step number.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^count)) / (sqrt(v / (1 - b2^count)) + eps)``.
    Returns the new parameters and the new ``(m, v)``.
    """
    m_old, v_old = moments
    new_p, new_m, new_v = {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        new_m[name] = b1 * m_old[name] + (1.0 - b1) * g
        new_v[name] = b2 * v_old[name] + (1.0 - b2) * g * g
        m_hat = new_m[name] / (1.0 - b1**count)
        v_hat = new_v[name] / (1.0 - b2**count)
        new_p[name] = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return new_p, (new_m, new_v)


def mlp_train_steps(
    state: dict[str, np.ndarray],
    config: VAEConfig,
    train: TrainConfig,
    xs: np.ndarray,
    eps: np.ndarray,
    moments: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
    first_step: int = 0,
) -> tuple[dict[str, np.ndarray], tuple[dict[str, np.ndarray], dict[str, np.ndarray]], np.ndarray]:
    """Adam steps on ``mlp_objective_and_grads`` with the settings of ``train`` (learning rate,
    moment decays, epsilon, KL weight with warm-up, free bits), the update both trainers make.

    Args:
      xs: (S, B, C, H, W) batches; eps: (S, B, L) noise.
      moments: Adam's ``(m, v)`` so far (zeros when None); first_step: steps taken so far.

    Returns:
      the new weights, the new ``(m, v)`` and the (S,) objectives, each at the weights before
      its step.
    """
    if moments is None:
        zeros = {n: np.zeros_like(p) for n, p in state.items()}
        moments = (zeros, dict(zeros))
    losses = []
    for s in range(len(xs)):
        step = first_step + s
        beta = kl_weight(train.beta, train.warmup_steps, step)
        value, grads = mlp_objective_and_grads(state, config, xs[s], eps[s], beta, train.free_bits)
        state, moments = adam_update(
            state, grads, moments, step + 1, train.lr, train.b1, train.b2, train.adam_eps
        )
        losses.append(value)
    return state, moments, np.asarray(losses)


def mlp_negative_iwae_bound(
    state: dict[str, np.ndarray], config: VAEConfig, x: np.ndarray, eps: np.ndarray
) -> np.ndarray:
    """Minus the importance-weighted bound per example for the MLP VAE: eps (K, B, L) -> (B,).

    ``-(log sum_k exp(log w_k) - log K)`` with ``log w_k = log p(x|z_k) + log N(z_k; 0, I)
    - log N(z_k; mean, diag(exp(logvar)))``, the densities written out term by term.
    """
    k, b, latent = eps.shape
    _, mean, logvar = mlp_forward(state, config, x, eps[0])
    z = mean + np.exp(0.5 * logvar) * eps  # (K, B, L)
    out = _mlp_decode(state, config, z.reshape(k * b, latent)).reshape(k, b, -1)
    target = _flat(x)[None]  # (1, B, D)
    if config.likelihood == "bernoulli":
        # The logit form (accurate for any logit), not bernoulli_log_likelihood's.
        log_lik = np.sum(target * out - _softplus(out), axis=2)
    else:
        var = config.gaussian_std**2
        log_lik = -np.sum(0.5 * (target - out) ** 2 / var, axis=2) - target.shape[2] * (
            np.log(config.gaussian_std) + 0.5 * LOG_2PI
        )
    log_prior = np.sum(-0.5 * z**2 - 0.5 * LOG_2PI, axis=2)
    log_q = np.sum(-0.5 * (z - mean) ** 2 / np.exp(logvar) - 0.5 * logvar - 0.5 * LOG_2PI, axis=2)
    a = log_lik + log_prior - log_q  # (K, B)
    top = a.max(axis=0)
    return -(top + np.log(np.sum(np.exp(a - top), axis=0)) - np.log(k))
