"""The model configuration: one frozen, typed dataclass shared by both backends.

Every checkpoint stores its config as JSON in the safetensors metadata, so a checkpoint is
self-describing and both backends rebuild exactly the same architecture from it.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from typing import Any

from vae_common.errors import ConfigError

LIKELIHOODS = ("bernoulli", "gaussian")
ARCHITECTURES = ("mlp", "conv")

# The convolutional architecture uses one fixed layer shape: kernel 4, stride 2, padding 1, which
# halves the spatial size exactly at every encoder layer and doubles it at every decoder layer.
CONV_KERNEL = 4
CONV_STRIDE = 2
CONV_PADDING = 1


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name} must be a sequence of integers, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            raise ConfigError(f"{name} must contain integers, got {item!r} in {value!r}")
        out.append(int(item))
    return tuple(out)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a VAE, identical in both backends.

    Attributes:
      input_shape: (channels, height, width) of one image, PyTorch's NCHW order without N.
      hidden: widths of the dense hidden layers of the encoder; the decoder mirrors them in reverse.
      latent_dim: dimension of z.
      likelihood: ``"bernoulli"`` (decoder outputs logits, pixels in [0, 1]) or ``"gaussian"``
        (decoder outputs the mean of a Gaussian with fixed standard deviation ``gaussian_std``).
      arch: ``"mlp"`` (dense layers on the flattened image) or ``"conv"`` (strided convolutions,
        then the dense layers; the decoder mirrors them with transposed convolutions).
      conv_channels: output channels of each encoder convolution (``arch="conv"`` only). Each layer
        halves height and width, so both must be divisible by ``2 ** len(conv_channels)``.
      gaussian_std: the fixed standard deviation of the Gaussian likelihood.
    """

    input_shape: tuple[int, int, int] = (1, 28, 28)
    hidden: tuple[int, ...] = (400,)
    latent_dim: int = 20
    likelihood: str = "bernoulli"
    arch: str = "mlp"
    conv_channels: tuple[int, ...] = field(default=())
    gaussian_std: float = 1.0

    def __post_init__(self) -> None:
        shape = _as_int_tuple("input_shape", self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(
                f"input_shape must be three positive integers (channels, height, width), got "
                f"{self.input_shape!r}"
            )
        hidden = _as_int_tuple("hidden", self.hidden)
        if any(h < 1 for h in hidden):
            raise ConfigError(f"hidden sizes must be positive, got {self.hidden!r}")
        channels = _as_int_tuple("conv_channels", self.conv_channels)
        if isinstance(self.latent_dim, bool) or not hasattr(self.latent_dim, "__index__"):
            raise ConfigError(f"latent_dim must be an integer, got {self.latent_dim!r}")
        object.__setattr__(self, "latent_dim", int(self.latent_dim))
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be positive, got {self.latent_dim}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.arch == "mlp" and channels:
            raise ConfigError("conv_channels must be empty for arch='mlp'")
        if self.arch == "conv":
            if not channels or any(c < 1 for c in channels):
                raise ConfigError(
                    f"arch='conv' needs positive conv_channels, got {self.conv_channels!r}"
                )
            factor = CONV_STRIDE ** len(channels)
            if shape[1] % factor or shape[2] % factor:
                raise ConfigError(
                    f"input_shape {shape} does not fit {len(channels)} stride-2 convolutions: "
                    f"height and width must be divisible by {factor}"
                )
        if isinstance(self.gaussian_std, bool) or not isinstance(self.gaussian_std, numbers.Real):
            raise ConfigError(f"gaussian_std must be a number, got {self.gaussian_std!r}")
        std = float(self.gaussian_std)
        if not std > 0 or std != std or std == float("inf"):
            raise ConfigError(f"gaussian_std must be positive and finite, got {self.gaussian_std}")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "conv_channels", channels)
        object.__setattr__(self, "gaussian_std", std)

    @property
    def input_dim(self) -> int:
        """Number of pixel values in one image (channels * height * width)."""
        c, h, w = self.input_shape
        return c * h * w

    @property
    def conv_output_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) after the encoder convolutions; the input shape for MLPs."""
        if self.arch != "conv":
            return self.input_shape
        c, h, w = self.input_shape
        factor = CONV_STRIDE ** len(self.conv_channels)
        return (self.conv_channels[-1], h // factor, w // factor)

    def num_params(self) -> int:
        """The number of parameters of the model (``vae_common.spec.num_params``)."""
        from vae_common.spec import num_params  # spec builds on this module

        return num_params(self)

    def replace(self, **changes: Any) -> VAEConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("input_shape", "hidden", "conv_channels"):
            d[key] = list(d[key])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> VAEConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        return cls.from_dict(data)
