"""The canonical parameter spec: names, shapes and layouts of every tensor, derived from a config.

Canonical names and layouts are PyTorch's ``state_dict`` ones (``Linear.weight`` is (out, in),
``Conv2d.weight`` is (out, in, kh, kw), ``ConvTranspose2d.weight`` is (in, out, kh, kw)), so a plain
PyTorch user can ``load_state_dict`` one of our checkpoints. The JAX backend converts to and from
this layout through the table in ``vae_jax.convert``; nothing guesses layouts from names or ranks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vae_common.config import CONV_KERNEL, CONV_STRIDE, VAEConfig
from vae_common.errors import ConfigError

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


# The most parameters a model may have: 1e9 (4 GB in float32 for the weights alone, several
# times that with gradients and Adam's moments). The default MLP has 0.65 million.
MAX_PARAMS = 1_000_000_000

# What one training or parity step holds per parameter and per activation, in units of the
# dtype: weights, gradients and Adam's two moments in each backend, plus the canonical numpy copy
# (parameters); the forward values and their gradients, in each backend (activations).
PARAM_COPIES = 9
ACTIVATION_COPIES = 4


def num_params(config: VAEConfig) -> int:
    """The number of parameters (weights and biases) of the model for ``config``."""
    return sum(math.prod(s.shape) for s in param_spec(config))


def activations_per_example(config: VAEConfig) -> int:
    """The values one example produces through the model: every layer's output, encoder and
    decoder (the input and the reconstruction included)."""
    c, h, w = config.input_shape
    units = 2 * config.input_dim + 3 * config.latent_dim  # x, decoded; mean, logvar, z
    for channels in config.conv_channels:
        h, w = h // CONV_STRIDE, w // CONV_STRIDE
        units += 2 * channels * h * w  # an encoder feature map and its decoder mirror
    units += 2 * sum(config.hidden)
    return units


def estimated_bytes(
    config: VAEConfig, dtype: str, batch_size: int = 0, samples: int = 1, dataset: int = 0
) -> int:
    """A rough upper estimate, in bytes, of the memory a step on ``batch_size`` examples with
    ``samples`` noise draws each needs (``PARAM_COPIES`` and ``ACTIVATION_COPIES``), with
    ``dataset`` images held in memory (a host and a device copy)."""
    values = PARAM_COPIES * num_params(config)
    values += ACTIVATION_COPIES * batch_size * samples * activations_per_example(config)
    values += 2 * dataset * config.input_dim
    return values * np.dtype(dtype).itemsize


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``, else the free
    physical pages), or None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_size(
    config: VAEConfig,
    dtype: str = "float32",
    batch_size: int = 0,
    samples: int = 1,
    dataset: int = 0,
    available: int | None = None,
) -> None:
    """``ConfigError`` before anything is allocated when the model has more than ``MAX_PARAMS``
    parameters, or when ``estimated_bytes`` exceeds the available memory (``available``, by
    default ``available_memory()``; not checked when that is unknown)."""
    n = num_params(config)
    if n > MAX_PARAMS:
        raise ConfigError(
            f"the model has {n:,} parameters, more than the limit of {MAX_PARAMS:,} "
            f"(vae_common.spec.MAX_PARAMS); reduce latent_dim ({config.latent_dim}), hidden "
            f"{config.hidden} or the image size {config.input_shape}"
        )
    available = available_memory() if available is None else available
    needed = estimated_bytes(config, dtype, batch_size, samples, dataset)
    if available is not None and needed > available:
        what = f"{n:,} parameters"
        if batch_size:
            what += f", batches of {batch_size:,} x {samples} samples"
        if dataset:
            what += f", {dataset:,} images"
        raise ConfigError(
            f"{what} in {dtype} need about {needed / 2**30:,.1f} GiB, more than the "
            f"{available / 2**30:,.1f} GiB of memory available; use a smaller model or batch"
        )


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
