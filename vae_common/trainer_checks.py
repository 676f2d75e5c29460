"""The argument checks of ``vae_common.trainer.TrainerBase``: its constructor's arguments and the
split of a batch over the devices of a data-parallel run (``ConfigError`` otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.constants import DTYPES
from vae_common.errors import ConfigError
from vae_common.training import TrainConfig


def check_arguments(config: Any, train: Any, dtype: Any) -> TrainConfig:
    """The trainer's ``TrainConfig`` (``TrainConfig()`` for None); ``ConfigError`` unless
    ``config`` is a ``VAEConfig``, ``train`` a ``TrainConfig`` or None and ``dtype`` one of
    ``DTYPES``."""
    if not isinstance(config, VAEConfig):
        raise ConfigError(f"config must be a VAEConfig, got {type(config).__name__}")
    if train is not None and not isinstance(train, TrainConfig):
        raise ConfigError(f"train must be a TrainConfig, got {type(train).__name__}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return train or TrainConfig()


def check_devices(devices: Any) -> int | None:
    """``devices`` as an int, or None; ``ConfigError`` unless it is None or a positive
    integer."""
    if devices is not None and (
        isinstance(devices, bool) or not isinstance(devices, int | np.integer) or devices < 1
    ):
        raise ConfigError(f"devices must be None or a positive integer, got {devices!r}")
    return None if devices is None else int(devices)


def check_split(batch: int, devices: int | None) -> None:
    """``ConfigError`` unless a batch of ``batch`` rows splits evenly over ``devices`` (None:
    one device, any batch)."""
    # Equal slices make the mean of the per-device means the global mean; an uneven last
    # batch never occurs in training (vae_common.batches.batch_indices drops it in the 1-device
    # run too), so any other size is a configuration error, refused before any step.
    if devices is not None and batch % devices:
        raise ConfigError(
            f"batch size {batch} does not split over {devices} devices; use a multiple of {devices}"
        )
