"""Flax (linen) modules of the VAE and the pure functions that apply them.

Data layout is PyTorch's: images are (B, C, H, W) in both backends, latents (B, L). The MLP flattens
an image in C, H, W order, exactly like ``torch.flatten``, so dense weights transfer unchanged
(transposed, see ``vae_jax.convert``). The convolutional layers run in NHWC internally (XLA's
preferred layout on CPU) and go back to NCHW before every flatten, so the dense layers after them
see torch's feature order too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_common import checks
from vae_common.config import VAEConfig
from vae_common.constants import DTYPES
from vae_common.errors import ConfigError, DeviceError
from vae_common.precision import check_precision
from vae_jax._layers import conv, conv_transpose, dense, to_dtype
from vae_jax._typing import Array, ArrayLike, DTypeLike, Params
from vae_jax.input_checks import check_eps, check_input, check_latents, check_params

# model.py names that only this backend has (the mirror test reads it): torch's reduced
# precision is a context (autocast), not a module setting.
JAX_ONLY = ("with_precision",)


class Encoder(nn.Module):
    """x (B, C, H, W) -> (mean, logvar), each (B, latent_dim).

    ``arch="conv"``: ReLU(conv) layers (each halving H and W), flattened in C, H, W order, then
    the dense layers of the MLP. The layers compute in ``compute_dtype`` (None: ``dtype``, the
    parameters' dtype); mean and logvar come out in ``dtype``.
    """

    config: VAEConfig
    dtype: Any = jnp.float32
    compute_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        cfg = self.config
        dt, ct = self.dtype, self.compute_dtype or self.dtype
        h = x
        if cfg.arch == "conv":
            h = h.transpose(0, 2, 3, 1)  # (B, H, W, C)
            c_in = cfg.input_shape[0]
            for i, c_out in enumerate(cfg.conv_channels):
                h = nn.relu(conv(cfg, f"encoder.conv.{i}", c_in, c_out, dt, ct)(h))
                c_in = c_out
            h = h.transpose(0, 3, 1, 2)  # (B, C_last, h, w), flattened like torch.flatten
        h = h.reshape(h.shape[0], -1)
        for i, size in enumerate(cfg.hidden):
            h = nn.relu(dense(cfg, f"encoder.hidden.{i}", size, dt, ct)(h))
        mean = dense(cfg, "encoder.mean", cfg.latent_dim, dt, ct)(h)
        logvar = dense(cfg, "encoder.logvar", cfg.latent_dim, dt, ct)(h)
        return to_dtype(mean, dt), to_dtype(logvar, dt)


class Decoder(nn.Module):
    """z (B, latent_dim) -> (B, C, H, W): Bernoulli logits, or the Gaussian mean.

    ``arch="conv"``: the dense layers, ReLU(project) to (B, C_last, h, w), then transposed
    convolutions (each doubling H and W) with ReLU between them; the last has no activation.
    The layers compute in ``compute_dtype`` (None: ``dtype``); the output comes out in ``dtype``.
    """

    config: VAEConfig
    dtype: Any = jnp.float32
    compute_dtype: Any = None

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg = self.config
        dt, ct = self.dtype, self.compute_dtype or self.dtype
        h = z
        for i, size in enumerate(reversed(cfg.hidden)):
            h = nn.relu(dense(cfg, f"decoder.hidden.{i}", size, dt, ct)(h))
        if cfg.arch == "mlp":
            out = dense(cfg, "decoder.out", cfg.input_dim, dt, ct)(h)
            return to_dtype(out.reshape((z.shape[0],) + cfg.input_shape), dt)
        shape = cfg.conv_output_shape
        features = shape[0] * shape[1] * shape[2]
        h = nn.relu(dense(cfg, "decoder.project", features, dt, ct)(h))
        h = h.reshape((z.shape[0],) + shape).transpose(0, 2, 3, 1)  # (B, h, w, C_last)
        channels = [*reversed(cfg.conv_channels), cfg.input_shape[0]]
        last = len(channels) - 2
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            h = conv_transpose(cfg, f"decoder.deconv.{i}", c_in, c_out, dt, ct)(h)
            if i < last:
                h = nn.relu(h)
        return to_dtype(h.transpose(0, 3, 1, 2), dt)  # (B, C, H, W)


class VAE(nn.Module):
    """The VAE as one Flax module with ``encode`` and ``decode`` methods.

    Use it through the pure functions of this package (``encode(model, params, x)`` and so on);
    ``params`` is the ``"params"`` collection, a nested dict laid out as in ``vae_jax.convert``.
    ``model.apply({"params": params}, x, eps)`` returns ``(decoded, mean, logvar)`` for given
    noise (the parity form); ``model.apply({"params": params}, x, rngs={"noise": key})`` draws
    the noise from the ``"noise"`` RNG stream, Flax's way of giving a module randomness.

    ``dtype`` is the parameters', the inputs' and the outputs' dtype; ``compute_dtype`` (None:
    ``dtype``) the one the dense and convolutional layers compute in (``with_precision``).
    """

    config: VAEConfig
    dtype: Any = jnp.float32
    compute_dtype: Any = None

    def setup(self) -> None:
        self.encoder = Encoder(self.config, self.dtype, self.compute_dtype)
        self.decoder = Decoder(self.config, self.dtype, self.compute_dtype)

    def encode(self, x: Array) -> tuple[Array, Array]:
        return self.encoder(x)

    def decode(self, z: Array) -> Array:
        return self.decoder(z)

    def __call__(self, x: Array, eps: Array | None = None) -> tuple[Array, Array, Array]:
        """One pass through the VAE with z = mean + exp(logvar / 2) * eps.

        Args:
          x: images (B, C, H, W).
          eps: N(0, I) noise (B, L); None draws it from the ``"noise"`` RNG stream
            (``apply(..., rngs={"noise": key})``).

        Returns:
          ``(decoded (B, C, H, W), mean (B, L), logvar (B, L))``: Bernoulli logits or the
          Gaussian mean, and the posterior's parameters.
        """
        x = check_input(self, x)
        if eps is not None:
            # (K, B, L) noise would broadcast through the decoder into the wrong image count.
            checks.check_noise_rank("VAE.__call__", "eps", np.shape(eps), 2)
            eps = check_eps(self, eps, x.shape[0])
        elif not self.has_rng("noise"):
            raise ConfigError(
                "VAE.__call__ without eps draws its noise from the 'noise' RNG stream: pass "
                "rngs={'noise': key} to apply, or pass eps"
            )
        mean, logvar = self.encoder(x)
        if eps is None:
            eps = jax.random.normal(self.make_rng("noise"), mean.shape, mean.dtype)
        return self.decoder(mean + jnp.exp(0.5 * logvar) * eps), mean, logvar


def resolve_dtype(dtype: DTypeLike) -> jnp.dtype:
    """``"float32"``/``"float64"`` (or a numpy/jax dtype) to a jnp dtype; float64 needs x64 on."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if name == "float64" and not jax.config.read("jax_enable_x64"):
        raise DeviceError(
            "float64 was requested but JAX runs in 32-bit mode; call "
            "jax.config.update('jax_enable_x64', True) before creating any array"
        )
    return jnp.dtype(name)


def build_model(config: VAEConfig, dtype: DTypeLike = "float32") -> VAE:
    """The Flax module for ``config``, computing and storing parameters in ``dtype``."""
    return VAE(config=config, dtype=resolve_dtype(dtype))


def with_precision(model: VAE, precision: str) -> VAE:
    """``model`` computing in a training precision (``vae_common.constants.PRECISIONS``).

    ``"bf16"``: the dense and convolutional layers take bfloat16 inputs and kernels (Flax's
    ``dtype=bfloat16`` with ``param_dtype`` the model's), while the parameters, the module's
    outputs (mean, logvar, decoded) and so the losses and their reductions stay in the model's
    dtype, float32. ``"float32"`` and ``"tf32"``: ``model`` itself; TF32 is a matmul precision,
    not a dtype (``vae_jax.train`` traces the steps under ``jax.default_matmul_precision``).
    ``ConfigError`` for another name, or for a reduced precision of a float64 model.
    """
    check_precision(precision, np.dtype(model.dtype).name)
    return model.clone(compute_dtype=jnp.bfloat16) if precision == "bf16" else model


def init_params(model: VAE, rng: Array) -> dict:
    """Fresh parameters (PyTorch's default initialisation distribution) from a JAX key."""
    cfg = model.config
    x = jnp.zeros((1,) + cfg.input_shape, model.dtype)
    eps = jnp.zeros((1, cfg.latent_dim), model.dtype)
    return model.init(rng, x, eps)["params"]


def _apply(model: VAE, params: Params, method: Callable[..., Any], *args: Array) -> Any:
    check_params(model, params)
    return model.apply({"params": params}, *args, method=method)


def encode(model: VAE, params: Params, x: ArrayLike) -> tuple[Array, Array]:
    """q(z|x): x (B, C, H, W) -> (mean, logvar), each (B, L)."""
    x = check_input(model, x)
    return cast(tuple[Array, Array], _apply(model, params, VAE.encode, x))


def decode(model: VAE, params: Params, z: ArrayLike) -> Array:
    """p(x|z) parameters: z (B, L) -> (B, C, H, W) logits (Bernoulli) or mean (Gaussian).

    ``ShapeError`` unless z is a real floating-point (B, latent_dim) array with B >= 1.
    """
    out = _apply(model, params, VAE.decode, check_latents(model, z))
    return cast(Array, out)


def decode_mean(model: VAE, params: Params, z: ArrayLike) -> Array:
    """The image-space mean E[x|z], (B, C, H, W): sigmoid of the logits, or the Gaussian mean."""
    out = decode(model, params, z)
    return jax.nn.sigmoid(out) if model.config.likelihood == "bernoulli" else out
