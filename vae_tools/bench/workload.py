"""What every contender trains: the model, the data, the batches, and the FLOPs of one sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vae_common.config import CONV_KERNEL, VAEConfig
from vae_common.constants import DEFAULT_CONV_CHANNELS, DEFAULT_HIDDEN, DEFAULT_LATENT_DIM
from vae_common.data import batch_indices
from vae_common.errors import ConfigError
from vae_common.precision import check_precision
from vae_common.spec import init_canonical, param_spec
from vae_common.training import TrainConfig


def default_config(arch: str = "mlp", input_shape: tuple[int, int, int] = (1, 28, 28)) -> VAEConfig:
    """The benchmark's model when none is given: the project's defaults for ``arch``."""
    if arch not in DEFAULT_HIDDEN:
        raise ConfigError(f"arch must be one of {sorted(DEFAULT_HIDDEN)}, got {arch!r}")
    return VAEConfig(
        input_shape=input_shape,
        hidden=DEFAULT_HIDDEN[arch],
        latent_dim=DEFAULT_LATENT_DIM,
        arch=arch,
        conv_channels=DEFAULT_CONV_CHANNELS if arch == "conv" else (),
    )


def make_data(config: VAEConfig, samples: int, seed: int = 0) -> np.ndarray:
    """Synthetic images (samples, C, H, W), float32 uniform in [0, 1), with a zero 4-pixel
    border where the image is at least 16x16, like MNIST's: the weights of never-lit pixels get
    zero gradients, so Adam's moments decay into denormals as they do on real data."""
    rng = np.random.default_rng(seed)
    x = rng.random((samples,) + tuple(config.input_shape), dtype=np.float32)
    _, h, w = config.input_shape
    if h >= 16 and w >= 16:
        x[:, :, :4], x[:, :, -4:], x[:, :, :, :4], x[:, :, :, -4:] = 0, 0, 0, 0
    return x


def flops_per_sample(config: VAEConfig) -> float:
    """FLOPs (2 x multiply-adds) of one training sample: forward plus backward, where the
    backward costs two forward passes per layer except the first (no input gradient needed)."""
    _, h, w = config.input_shape
    total = 0
    for i, s in enumerate(x for x in param_spec(config) if x.kind != "bias"):
        if s.kind == "linear_weight":
            macs = s.shape[0] * s.shape[1]
        elif s.kind == "conv_weight":
            h, w = h // 2, w // 2
            macs = h * w * s.shape[0] * s.shape[1] * CONV_KERNEL**2
        else:  # transposed conv: every input pixel scatters a k x k patch to every output channel
            macs = h * w * s.shape[0] * s.shape[1] * CONV_KERNEL**2
            h, w = h * 2, w * 2
        total += macs * (2 if i == 0 else 3)
    return 2.0 * total


@dataclass(frozen=True, eq=False)
class Workload:
    """One benchmark setting, the same for every contender.

    Attributes:
      config: the model.
      data: (N, C, H, W) images in [0, 1]; each contender moves them to its device once.
      batch_size: B; an epoch is ``N // B`` steps (the last incomplete batch is dropped).
      dtype: ``"float32"`` or ``"float64"``.
      device: ``"cpu"``, ``"cuda"`` or ``"xpu"`` (JAX has no XPU backend and runs on the CPU).
      seed: seeds the initial weights, the batch order and the noise.
      train: Adam and objective settings.
      devices: None for one device; N for the data-parallel rows, whose trainers are
        ``Trainer(devices=N)`` (each global batch of ``batch_size`` split into N slices), so B
        must be a multiple of N.
      precision: the library contenders' training precision (``vae_common.precision``:
        float32, tf32 or bf16); the reference row always trains in plain float32.
    """

    config: VAEConfig
    data: np.ndarray
    batch_size: int
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    devices: int | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.precision, self.dtype)
        if not 1 <= self.batch_size <= len(self.data):
            raise ConfigError(
                f"batch size {self.batch_size} must be between 1 and the {len(self.data)} samples"
            )
        if self.devices is not None and (
            isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1
        ):
            raise ConfigError(f"devices must be None or a positive integer, got {self.devices!r}")
        if self.devices is not None and self.batch_size % self.devices:
            raise ConfigError(
                f"batch size {self.batch_size} does not split over {self.devices} devices; use a "
                f"multiple of {self.devices}"
            )

    @property
    def steps(self) -> int:
        """Steps per epoch, ``N // B``."""
        return len(self.data) // self.batch_size

    def batches(self, epoch: int) -> np.ndarray:
        """The (steps, B) indices of ``epoch``, the ``vae_common.data.batch_indices`` the
        training runs use."""
        return batch_indices(len(self.data), self.batch_size, self.seed, epoch)

    def initial_weights(self) -> dict[str, np.ndarray]:
        """The canonical weights every library contender starts from."""
        return init_canonical(self.config, self.seed, self.dtype)
