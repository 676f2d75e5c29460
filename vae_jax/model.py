"""Flax (linen) modules of the VAE and the pure functions that apply them.

Data layout is PyTorch's: images are (B, C, H, W) in both backends, latents (B, L). The MLP flattens
an image in C, H, W order, exactly like ``torch.flatten``, so dense weights transfer unchanged
(transposed, see ``vae_jax.convert``). The convolutional layers run in NHWC internally (XLA's
preferred layout on CPU) and go back to NCHW before every flatten, so the dense layers after them
see torch's feature order too.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_common.config import CONV_KERNEL, CONV_PADDING, CONV_STRIDE, VAEConfig
from vae_common.spec import spec_by_name

DTYPES = ("float32", "float64")
# Layouts of lax convolutions here: activations NHWC, kernels HWIO.
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


class ShapeError(ValueError):
    """An input array has the wrong shape or dtype; the message names the array and both shapes."""


def _uniform(bound: float):
    """PyTorch's default init: uniform on (-bound, bound) with bound = 1/sqrt(fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _bound(config: VAEConfig, name: str) -> float:
    # The fan-in comes from the canonical spec, so both backends draw from the same distribution.
    return 1.0 / float(np.sqrt(spec_by_name(config)[f"{name}.weight"].fan_in))


def _module_name(name: str) -> str:
    # The canonical prefix with dots turned into underscores, without the top level
    # ("encoder.hidden.0" -> module "hidden_0" inside "encoder"), as in ``vae_jax.convert``.
    return name.split(".", 1)[1].replace(".", "_")


def _dense(config: VAEConfig, name: str, features: int, dtype) -> nn.Dense:
    bound = _bound(config, name)
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=dtype,
        kernel_init=_uniform(bound),
        bias_init=_uniform(bound),
        name=_module_name(name),
    )


def _conv_stride2(x, kernel):
    """torch ``Conv2d(k=4, stride=2, padding=1)`` without bias, in NHWC.

    Args:
      x: (B, H, W, C_in), H and W even.
      kernel: (4, 4, C_in, C_out), HWIO (canonical OIHW weight transposed (2, 3, 1, 0)).

    Returns:
      (B, H/2, W/2, C_out).
    """
    p = CONV_PADDING
    return jax.lax.conv_general_dilated(
        x, kernel, (CONV_STRIDE, CONV_STRIDE), ((p, p), (p, p)), dimension_numbers=_DIMENSION_NUMBERS
    )


def _phase_kernel(kernel):
    """(4, 4, I, O) transposed-conv kernel -> (2, 2, I, 4 * O) kernel of its four output phases.

    Output pixel (2m + ry, 2n + rx) of the transposed convolution is a 2x2 correlation of the
    input padded by one, at (m + ry, n + rx), with taps ``kernel[3 - ry - 2 dy, 3 - rx - 2 dx]``
    for dy, dx in {0, 1}. The phase kernel holds these taps at [dy, dx, :, (ry, rx, o)].
    """
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    flipped = kernel[::-1, ::-1].reshape(2, 2, 2, 2, c_in, c_out)  # (dy, ry, dx, rx, I, O)
    return flipped.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c_in, 4 * c_out)


def _conv_transpose_stride2(x, kernel):
    """torch ``ConvTranspose2d(k=4, stride=2, padding=1)`` without bias, in NHWC.

    Computed as one stride-1 2x2 convolution producing all four output phases (sub-pixel
    decomposition) followed by a depth-to-space interleave. XLA:CPU runs this form, and above
    all its gradient, many times faster than the ``lhs_dilation`` form of ``lax.conv_transpose``,
    and it multiplies no inserted zeros. Every output is the same sum of products as torch's.

    Args:
      x: (B, H, W, I).
      kernel: (4, 4, I, O), canonical (I, O, kh, kw) weight transposed (2, 3, 0, 1).

    Returns:
      (B, 2H, 2W, O).
    """
    assert (CONV_KERNEL, CONV_STRIDE, CONV_PADDING) == (4, 2, 1), "phase split assumes k4 s2 p1"
    b, h, w, _ = x.shape
    c_out = kernel.shape[3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = jax.lax.conv_general_dilated(
        padded, _phase_kernel(kernel), (1, 1), "VALID", dimension_numbers=_DIMENSION_NUMBERS
    ).reshape(b, h + 1, w + 1, 2, 2, c_out)
    rows = [
        jnp.stack([phases[:, ry : ry + h, rx : rx + w, ry, rx] for rx in range(2)], axis=3)
        for ry in range(2)
    ]  # each (B, H, W, 2 (rx), O)
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c_out)  # (B, H, 2, W, 2, O) -> ...


class _Conv(nn.Module):
    """One encoder convolution, NHWC: (B, H, W, C_in) -> (B, H/2, W/2, C_out), no activation."""

    config: VAEConfig
    canonical: str  # e.g. "encoder.conv.0"
    c_in: int
    c_out: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        bound = _bound(self.config, self.canonical)
        k = CONV_KERNEL
        kernel = self.param("kernel", _uniform(bound), (k, k, self.c_in, self.c_out), self.dtype)
        bias = self.param("bias", _uniform(bound), (self.c_out,), self.dtype)
        return _conv_stride2(x.astype(self.dtype), kernel) + bias


class _ConvTranspose(nn.Module):
    """One decoder transposed convolution, NHWC: (B, H, W, C_in) -> (B, 2H, 2W, C_out)."""

    config: VAEConfig
    canonical: str  # e.g. "decoder.deconv.0"
    c_in: int
    c_out: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        bound = _bound(self.config, self.canonical)
        k = CONV_KERNEL
        kernel = self.param("kernel", _uniform(bound), (k, k, self.c_in, self.c_out), self.dtype)
        bias = self.param("bias", _uniform(bound), (self.c_out,), self.dtype)
        return _conv_transpose_stride2(x.astype(self.dtype), kernel) + bias


def _conv(config: VAEConfig, name: str, c_in: int, c_out: int, dtype) -> _Conv:
    return _Conv(config, name, c_in, c_out, dtype, name=_module_name(name))


def _conv_transpose(config: VAEConfig, name: str, c_in: int, c_out: int, dtype) -> _ConvTranspose:
    return _ConvTranspose(config, name, c_in, c_out, dtype, name=_module_name(name))


class Encoder(nn.Module):
    """x (B, C, H, W) -> (mean, logvar), each (B, latent_dim).

    ``arch="conv"``: ReLU(conv) layers (each halving H and W), flattened in C, H, W order, then
    the dense layers of the MLP.
    """

    config: VAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = x
        if cfg.arch == "conv":
            h = h.transpose(0, 2, 3, 1)  # (B, H, W, C)
            c_in = cfg.input_shape[0]
            for i, c_out in enumerate(cfg.conv_channels):
                h = nn.relu(_conv(cfg, f"encoder.conv.{i}", c_in, c_out, self.dtype)(h))
                c_in = c_out
            h = h.transpose(0, 3, 1, 2)  # (B, C_last, h, w), flattened like torch.flatten
        h = h.reshape(h.shape[0], -1)
        for i, size in enumerate(cfg.hidden):
            h = nn.relu(_dense(cfg, f"encoder.hidden.{i}", size, self.dtype)(h))
        mean = _dense(cfg, "encoder.mean", cfg.latent_dim, self.dtype)(h)
        logvar = _dense(cfg, "encoder.logvar", cfg.latent_dim, self.dtype)(h)
        return mean, logvar


class Decoder(nn.Module):
    """z (B, latent_dim) -> (B, C, H, W): Bernoulli logits, or the Gaussian mean.

    ``arch="conv"``: the dense layers, ReLU(project) to (B, C_last, h, w), then transposed
    convolutions (each doubling H and W) with ReLU between them; the last has no activation.
    """

    config: VAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg = self.config
        h = z
        for i, size in enumerate(reversed(cfg.hidden)):
            h = nn.relu(_dense(cfg, f"decoder.hidden.{i}", size, self.dtype)(h))
        if cfg.arch == "mlp":
            out = _dense(cfg, "decoder.out", cfg.input_dim, self.dtype)(h)
            return out.reshape((z.shape[0],) + cfg.input_shape)
        shape = cfg.conv_output_shape
        features = shape[0] * shape[1] * shape[2]
        h = nn.relu(_dense(cfg, "decoder.project", features, self.dtype)(h))
        h = h.reshape((z.shape[0],) + shape).transpose(0, 2, 3, 1)  # (B, h, w, C_last)
        channels = [*reversed(cfg.conv_channels), cfg.input_shape[0]]
        last = len(channels) - 2
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            h = _conv_transpose(cfg, f"decoder.deconv.{i}", c_in, c_out, self.dtype)(h)
            if i < last:
                h = nn.relu(h)
        return h.transpose(0, 3, 1, 2)  # (B, C, H, W)


class VAE(nn.Module):
    """The VAE as one Flax module with ``encode`` and ``decode`` methods.

    Use it through the pure functions of this package (``encode(model, params, x)`` and so on);
    ``params`` is the ``"params"`` collection, a nested dict laid out as in ``vae_jax.convert``.
    """

    config: VAEConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.config, self.dtype)
        self.decoder = Decoder(self.config, self.dtype)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x, eps):
        mean, logvar = self.encoder(x)
        return self.decoder(mean + jnp.exp(0.5 * logvar) * eps), mean, logvar


def resolve_dtype(dtype) -> jnp.dtype:
    """``"float32"``/``"float64"`` (or a numpy/jax dtype) to a jnp dtype; float64 needs x64 on."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 was requested but JAX runs in 32-bit mode; call "
            "jax.config.update('jax_enable_x64', True) before creating any array"
        )
    return jnp.dtype(name)


def build_model(config: VAEConfig, dtype="float32") -> VAE:
    """The Flax module for ``config``, computing and storing parameters in ``dtype``."""
    return VAE(config=config, dtype=resolve_dtype(dtype))


def init_params(model: VAE, rng) -> dict:
    """Fresh parameters (PyTorch's default initialisation distribution) from a JAX key."""
    cfg = model.config
    x = jnp.zeros((1,) + cfg.input_shape, model.dtype)
    eps = jnp.zeros((1, cfg.latent_dim), model.dtype)
    return model.init(rng, x, eps)["params"]


def check_input(model: VAE, x, name: str = "x"):
    """``x`` as an array of the model's dtype; ``ShapeError`` unless it is (B, C, H, W) of the config."""
    x = jnp.asarray(x)
    expected = model.config.input_shape
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ShapeError(
            f"{name} has shape {tuple(x.shape)} but the model expects (batch, {', '.join(map(str, expected))})"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ShapeError(f"{name} must be floating point, got dtype {x.dtype}")
    return x.astype(model.dtype)


def check_eps(model: VAE, eps, batch: int, name: str = "eps"):
    """``eps`` as an array of the model's dtype; it must be (B, L) or (K, B, L)."""
    eps = jnp.asarray(eps)
    latent = model.config.latent_dim
    if eps.ndim not in (2, 3) or eps.shape[-2:] != (batch, latent):
        raise ShapeError(
            f"{name} has shape {tuple(eps.shape)} but must be ({batch}, {latent}) or "
            f"(K, {batch}, {latent}) for a batch of {batch} and latent_dim {latent}"
        )
    return eps.astype(model.dtype)


def encode(model: VAE, params, x):
    """q(z|x): x (B, C, H, W) -> (mean, logvar), each (B, L)."""
    x = check_input(model, x)
    return model.apply({"params": params}, x, method=VAE.encode)


def decode(model: VAE, params, z):
    """p(x|z) parameters: z (B, L) -> (B, C, H, W) logits (Bernoulli) or mean (Gaussian)."""
    return model.apply({"params": params}, jnp.asarray(z, model.dtype), method=VAE.decode)


def decode_mean(model: VAE, params, z):
    """The image-space mean E[x|z], (B, C, H, W): sigmoid of the logits, or the Gaussian mean."""
    out = decode(model, params, z)
    return jax.nn.sigmoid(out) if model.config.likelihood == "bernoulli" else out
