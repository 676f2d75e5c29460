"""The canonical parameter spec: names, shapes and layouts of every tensor, derived from a config.

Canonical names and layouts are PyTorch's ``state_dict`` ones (``Linear.weight`` is (out, in),
``Conv2d.weight`` is (out, in, kh, kw), ``ConvTranspose2d.weight`` is (in, out, kh, kw)), so a plain
PyTorch user can ``load_state_dict`` one of our checkpoints. The JAX backend converts to and from
this layout through the table in ``vae_jax.convert``; nothing guesses layouts from names or ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vae_common.config import CONV_KERNEL, VAEConfig

Kind = Literal["linear_weight", "conv_weight", "conv_transpose_weight", "bias"]


@dataclass(frozen=True)
class ParamSpec:
    """One canonical tensor.

    Attributes:
      name: the PyTorch ``state_dict`` key, e.g. ``"encoder.hidden.0.weight"``.
      shape: its shape in PyTorch layout.
      kind: the layout family, which decides how other frameworks transpose it.
      fan_in: inputs feeding one output unit (PyTorch's default initialisation uses it).
    """

    name: str
    shape: tuple[int, ...]
    kind: Kind
    fan_in: int


def _linear(prefix: str, n_in: int, n_out: int) -> list[ParamSpec]:
    return [
        ParamSpec(f"{prefix}.weight", (n_out, n_in), "linear_weight", n_in),
        ParamSpec(f"{prefix}.bias", (n_out,), "bias", n_in),
    ]


def _conv(prefix: str, c_in: int, c_out: int) -> list[ParamSpec]:
    k = CONV_KERNEL
    return [
        ParamSpec(f"{prefix}.weight", (c_out, c_in, k, k), "conv_weight", c_in * k * k),
        ParamSpec(f"{prefix}.bias", (c_out,), "bias", c_in * k * k),
    ]


def _conv_transpose(prefix: str, c_in: int, c_out: int) -> list[ParamSpec]:
    # PyTorch computes the fan-in of a ConvTranspose2d weight (in, out, kh, kw) from dim 1.
    k = CONV_KERNEL
    return [
        ParamSpec(f"{prefix}.weight", (c_in, c_out, k, k), "conv_transpose_weight", c_out * k * k),
        ParamSpec(f"{prefix}.bias", (c_out,), "bias", c_out * k * k),
    ]


def param_spec(config: VAEConfig) -> list[ParamSpec]:
    """Every parameter tensor of the model for ``config``, in ``state_dict`` order.

    MLP: ``encoder.hidden.{i}``, ``encoder.mean``, ``encoder.logvar``, ``decoder.hidden.{i}``,
    ``decoder.out`` (each ``.weight`` and ``.bias``).
    Conv: ``encoder.conv.{i}`` first, then the MLP encoder on the flattened feature map; the decoder
    has ``decoder.hidden.{i}``, ``decoder.project`` (to the flattened feature map) and
    ``decoder.deconv.{i}`` (transposed convolutions; the last one outputs the image channels).
    """
    specs: list[ParamSpec] = []
    c_in = config.input_shape[0]
    for i, c_out in enumerate(config.conv_channels):
        specs += _conv(f"encoder.conv.{i}", c_in, c_out)
        c_in = c_out
    c, h, w = config.conv_output_shape
    features = c * h * w
    width = features
    for i, size in enumerate(config.hidden):
        specs += _linear(f"encoder.hidden.{i}", width, size)
        width = size
    specs += _linear("encoder.mean", width, config.latent_dim)
    specs += _linear("encoder.logvar", width, config.latent_dim)
    width = config.latent_dim
    for i, size in enumerate(reversed(config.hidden)):
        specs += _linear(f"decoder.hidden.{i}", width, size)
        width = size
    if config.arch == "mlp":
        specs += _linear("decoder.out", width, config.input_dim)
        return specs
    specs += _linear("decoder.project", width, features)
    channels = list(reversed(config.conv_channels)) + [config.input_shape[0]]
    for i, (a, b) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        specs += _conv_transpose(f"decoder.deconv.{i}", a, b)
    return specs


def spec_by_name(config: VAEConfig) -> dict[str, ParamSpec]:
    return {s.name: s for s in param_spec(config)}


def init_canonical(
    config: VAEConfig, seed: int = 0, dtype: str = "float64"
) -> dict[str, np.ndarray]:
    """Fresh weights in canonical layout, drawn with numpy so both backends can start from them.

    Uses PyTorch's default initialisation for every layer: weights and biases uniform in
    (-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Returns:
      ``{name: array}`` in ``state_dict`` order, each of the spec's shape and ``dtype``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for s in param_spec(config):
        bound = 1.0 / np.sqrt(s.fan_in)
        out[s.name] = rng.uniform(-bound, bound, size=s.shape).astype(dtype)
    return out
