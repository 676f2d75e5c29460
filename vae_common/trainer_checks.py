"""The argument checks of ``vae_common.trainer.TrainerBase``: its constructor's arguments (the
``compile`` modes among them),
``put_data``'s stream settings, the streamed data given to ``train_epoch``, ``run_steps``'s
arrays and the split of a batch over the devices of a data-parallel run (``uneven``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vae_common import checks
from vae_common.config import VAEConfig
from vae_common.constants import DTYPES
from vae_common.errors import ConfigError, DeviceError, ShapeError
from vae_common.streaming import DEFAULT_PREFETCH, check_prefetch
from vae_common.training import TrainConfig

# The accepted values of ``TrainerBase(compile=...)``: eager steps, compiled steps, and steps
# replayed as CUDA graphs.
COMPILE_MODES = (False, True, "cudagraph")
# What a data-parallel trainer does with a batch its devices do not divide (``TrainerBase``).
UNEVEN = ("refuse", "replicate")


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


def check_compile(compile: Any) -> bool | str:
    """``compile`` as given; ``ConfigError`` naming it unless it is one of ``COMPILE_MODES``
    (``False``, ``True`` or ``"cudagraph"``; not another truthy value such as 1 or ``"yes"``)."""
    if isinstance(compile, bool):
        return compile
    if isinstance(compile, str) and compile == "cudagraph":
        return "cudagraph"
    raise ConfigError(f"compile must be False, True or 'cudagraph', got {compile!r}")


def cuda_graph_refused(device: str) -> DeviceError:
    """The error both trainers raise for ``compile="cudagraph"`` on ``device`` (its name: the
    torch device type, JAX's platform), which is not a CUDA device."""
    return DeviceError(
        f"compile='cudagraph' replays the training step as a CUDA graph and needs a CUDA "
        f"device, got {device!r}; use compile=True or compile=False there"
    )


def check_uneven(uneven: Any) -> str:
    """``uneven`` as given; ``ConfigError`` unless it is one of ``UNEVEN``."""
    if uneven not in UNEVEN:
        raise ConfigError(f"uneven must be one of {UNEVEN}, got {uneven!r}")
    return uneven


def check_host_data(data: Any, config: VAEConfig) -> None:
    """``ConfigError`` unless streamed ``data`` (a ``HostData``) was checked for ``config``'s
    input shape and likelihood (made by the ``put_data`` of a trainer of this model)."""
    made_for = (tuple(data.input_shape), data.likelihood)
    if made_for != (tuple(config.input_shape), config.likelihood):
        raise ConfigError(
            f"the streamed data was checked for input shape {made_for[0]} and likelihood "
            f"{made_for[1]!r}, but this trainer's model has {tuple(config.input_shape)} and "
            f"{config.likelihood!r}; make it with this trainer's put_data(x, stream=True)"
        )


def check_stream(stream: Any, prefetch: Any) -> int | None:
    """The prefetch depth of streamed data (``prefetch``, ``DEFAULT_PREFETCH`` for None), or
    None for resident data; ``ConfigError`` for a ``stream`` that is not a bool, a bad
    ``prefetch`` or one given without ``stream``."""
    if not isinstance(stream, bool):
        raise ConfigError(f"stream must be True or False, got {stream!r}")
    if not stream:
        if prefetch is not None:
            raise ConfigError(f"prefetch={prefetch!r} applies to streamed data (stream=True) only")
        return None
    return DEFAULT_PREFETCH if prefetch is None else check_prefetch(prefetch)


def check_steps(
    xs: Any, eps: Any, config: VAEConfig, devices: int | None, uneven: str
) -> tuple[Any, Any]:
    """``run_steps``'s batches (S, B, C, H, W) and noise (S, B, L) as numpy arrays, checked
    (``ShapeError``, ``DataError``; ``ConfigError`` as ``check_split``)."""
    xs, eps = np.asarray(xs), np.asarray(eps)
    # xs.shape[:2] is read only once xs is known to have 5 axes (a 0-d xs has no length).
    if xs.ndim != 5 or eps.shape != (*xs.shape[:2], config.latent_dim):
        raise ShapeError(
            f"run_steps needs xs (S, B, C, H, W) and eps (S, B, {config.latent_dim}), "
            f"got xs {xs.shape} and eps {eps.shape}"
        )
    checks.image_array(
        "xs", xs.reshape((-1,) + xs.shape[2:]), config.input_shape, config.likelihood
    )
    checks.check_dtype("eps", checks.dtype_name(eps.dtype))
    check_split(xs.shape[1], devices, uneven)
    return xs, eps


def check_split(batch: int, devices: int | None, uneven: str) -> None:
    """``ConfigError`` if a batch of ``batch`` rows does not split evenly over ``devices``
    (None: one device, any batch) and ``uneven`` is ``"refuse"``; with ``"replicate"`` such a
    batch is computed whole on every device instead."""
    # Equal slices make the mean of the per-device means the global mean. vae_common.batches
    # cuts an epoch into full batches, but its last, smaller batch (last_batch_indices) may not
    # split: refused before any step unless the trainer replicates it.
    if devices is not None and batch % devices and uneven == "refuse":
        raise ConfigError(
            f"batch size {batch} does not split over {devices} devices; use a multiple of "
            f"{devices}, or uneven='replicate' to compute such batches whole on every device"
        )
