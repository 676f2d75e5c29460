"""PyTorch modules of the VAE and the functions that apply them.

Parameters live under the canonical names (``vae_common.spec``), so ``model.state_dict()`` is the
canonical state. The functions mirror ``vae_jax.model`` name for name; ``params`` is either None
(use the module's own parameters) or a mapping of canonical name -> tensor, applied with
``torch.func.functional_call`` so the maths stays a function of (params, x, eps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from vae_common import checks
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError
from vae_torch._layers import Linear, conv, conv_transpose, pairs, to_dtype
from vae_torch._typing import Array, ArrayLike, DTypeLike, Params
from vae_torch.input_checks import check_eps, check_input, check_latents, check_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Encoder(nn.Module):
    """x (B, C, H, W) -> (mean, logvar), each (B, latent_dim).

    ``arch="conv"``: ReLU(conv) layers (each halving H and W), flattened in C, H, W order, then
    the dense layers of the MLP.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if config.arch == "conv":
            channels = [config.input_shape[0], *config.conv_channels]
            self.conv = nn.ModuleList(conv(a, b) for a, b in pairs(channels))
        c, h, w = config.conv_output_shape
        widths = [c * h * w, *config.hidden]
        self.hidden = nn.ModuleList(Linear(a, b) for a, b in pairs(widths))
        self.mean = Linear(widths[-1], config.latent_dim)
        self.logvar = Linear(widths[-1], config.latent_dim)

    def forward(self, x: Array) -> tuple[Array, Array]:
        h = x
        for layer in getattr(self, "conv", ()):
            h = torch.relu(layer(h))
        h = torch.flatten(h, 1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """z (B, latent_dim) -> (B, C, H, W): Bernoulli logits, or the Gaussian mean.

    ``arch="conv"``: the dense layers, ReLU(project) to (B, C_last, h, w), then transposed
    convolutions (each doubling H and W) with ReLU between them; the last has no activation.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.arch = config.arch
        self.input_shape = config.input_shape
        self.feature_shape = config.conv_output_shape
        widths = [config.latent_dim, *reversed(config.hidden)]
        self.hidden = nn.ModuleList(Linear(a, b) for a, b in pairs(widths))
        if config.arch == "mlp":
            self.out = Linear(widths[-1], config.input_dim)
            return
        c, h, w = self.feature_shape
        self.project = Linear(widths[-1], c * h * w)
        channels = [*reversed(config.conv_channels), config.input_shape[0]]
        self.deconv = nn.ModuleList(conv_transpose(a, b) for a, b in pairs(channels))

    def forward(self, z: Array) -> Array:
        h = z
        for layer in self.hidden:
            h = torch.relu(layer(h))
        if self.arch == "mlp":
            return self.out(h).reshape((z.shape[0],) + self.input_shape)
        h = torch.relu(self.project(h)).reshape((z.shape[0],) + self.feature_shape)
        last = len(self.deconv) - 1
        for i, layer in enumerate(self.deconv):
            h = layer(h)
            if i < last:
                h = torch.relu(h)
        return h


class VAE(nn.Module):
    """The VAE as a PyTorch module: ``model(x)`` returns ``(decoded, mean, logvar)``.

    ``model(x)`` draws the noise itself (``torch.randn_like`` on the module's device, so
    ``torch.manual_seed`` makes it repeatable), as in PyTorch's own VAE example; ``model(x, eps)``
    takes it from the caller, the form the parity tests use (both backends, the same ``eps``).
    ``decoded`` is the Bernoulli logits or the Gaussian mean (``decode_mean`` gives E[x|z]).

    ``forward(z, method="decode")`` and ``forward(x, method="encode")`` select the other entry
    points, so ``torch.func.functional_call`` can run each of them with external parameters.

    Under ``torch.autocast`` (the bf16 training precision) the layers compute in bfloat16 and
    every output (mean, logvar, decoded) comes back in the input's dtype.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: Array) -> tuple[Array, Array]:
        mean, logvar = self.encoder(x)
        return to_dtype(mean, x.dtype), to_dtype(logvar, x.dtype)

    def decode(self, z: Array) -> Array:
        return to_dtype(self.decoder(z), z.dtype)

    def forward(
        self, x: Array, eps: Array | None = None, *, method: str = "full"
    ) -> Array | tuple[Array, ...]:
        """One pass through the VAE with z = mean + exp(logvar / 2) * eps.

        Args:
          x: images (B, C, H, W) (for ``method="decode"``: latents z (B, L)).
          eps: N(0, I) noise (B, L); None draws it with ``torch.randn_like(mean)``.
          method: ``"full"``; ``"encode"`` returns ``(mean, logvar)``, ``"decode"`` the
            decoder's output for z (both take no eps).

        Returns:
          ``(decoded (B, C, H, W), mean (B, L), logvar (B, L))`` for ``"full"``.
        """
        if method == "encode":
            return self.encode(x)
        if method == "decode":
            return self.decode(x)
        if method != "full":
            raise ConfigError(f"method must be 'full', 'encode' or 'decode', got {method!r}")
        x = check_input(self, x)
        if eps is not None:
            # (K, B, L) noise would broadcast through the decoder into the wrong image count.
            checks.check_noise_rank("VAE.forward", "eps", tuple(np.shape(eps)), 2)
            eps = check_eps(self, eps, x.shape[0])
        mean, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mean)
        return self.decode(mean + torch.exp(0.5 * logvar) * eps), mean, logvar


def resolve_dtype(dtype: DTypeLike) -> torch.dtype:
    """``"float32"``/``"float64"`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def build_model(config: VAEConfig, dtype: DTypeLike = "float32") -> VAE:
    """The module for ``config`` on the CPU in ``dtype``; move it with ``.to(device)``."""
    return VAE(config).to(resolve_dtype(dtype))


def init_params(model: VAE, rng: torch.Generator | int) -> dict[str, torch.Tensor]:
    """Re-draw every parameter with PyTorch's default distribution (uniform in +-1/sqrt(fan_in)).

    Args:
      rng: a ``torch.Generator`` (on the model's device) or an int seed.

    Returns:
      ``dict(model.named_parameters())``, the parameters now in the module.
    """
    from vae_common.spec import spec_by_name

    if not isinstance(rng, torch.Generator):
        seed = int(rng)
        rng = torch.Generator(device=_device_of(model))
        rng.manual_seed(seed)
    specs = spec_by_name(model.config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            bound = 1.0 / float(np.sqrt(specs[name].fan_in))
            p.uniform_(-bound, bound, generator=rng)
    return dict(model.named_parameters())


def _device_of(model: VAE) -> torch.device:
    return next(model.parameters()).device


def _dtype_of(model: VAE) -> torch.dtype:
    return next(model.parameters()).dtype


def _apply(model: VAE, params: Mapping[str, torch.Tensor] | None, method: str, *args: Array) -> Any:
    if params is None:
        return model(*args, method=method)
    check_params(model, params)
    return torch.func.functional_call(model, dict(params), args, {"method": method})


def encode(model: VAE, params: Params, x: ArrayLike) -> tuple[Array, Array]:
    """q(z|x): x (B, C, H, W) -> (mean, logvar), each (B, L)."""
    return _apply(model, params, "encode", check_input(model, x))


def decode(model: VAE, params: Params, z: ArrayLike) -> Array:
    """p(x|z) parameters: z (B, L) -> (B, C, H, W) logits (Bernoulli) or mean (Gaussian).

    ``ShapeError`` unless z is a real floating-point (B, latent_dim) array with B >= 1.
    """
    return _apply(model, params, "decode", check_latents(model, z))


def decode_mean(model: VAE, params: Params, z: ArrayLike) -> Array:
    """The image-space mean E[x|z], (B, C, H, W): sigmoid of the logits, or the Gaussian mean."""
    out = decode(model, params, z)
    return torch.sigmoid(out) if model.config.likelihood == "bernoulli" else out
