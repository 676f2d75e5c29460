"""One device selector and the float64 check: the JAX twin of ``vae_torch.device``.

Order: an explicit name, then the ``VAE_JAX_DEVICE`` environment variable, then JAX's default
device (its first accelerator, else the CPU). Names are the torch ones where both exist
(``"cuda"`` means JAX's ``"gpu"`` platform) so one ``--device`` flag means the same in both.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax

from vae_common.constants import DTYPES
from vae_common.errors import DeviceError

ENV_VAR = "VAE_JAX_DEVICE"
# device.py names that only this backend has (the mirror test reads it): torch needs no switch.
JAX_ONLY = ("enable_float64",)
_DEVICE_RE = re.compile(r"^(cpu|cuda|gpu|tpu|xpu|mps)(?::(\d+))?$")
# torch's device names -> JAX platform names.
_PLATFORM = {"cuda": "gpu"}


def select_device(name: Any = None) -> jax.Device:
    """The device to run on.

    Args:
      name: ``"cpu"``, ``"cuda"``/``"gpu"``, ``"cuda:1"``, ``"tpu"``..., a ``jax.Device``, or
        None/``"auto"`` to use ``$VAE_JAX_DEVICE`` or else JAX's default device. The index
        counts this process's devices (``jax.local_devices``), as torch's does.

    Raises:
      DeviceError: the name is not a device, or JAX has no such device here (the message lists
        the devices it has). JAX has no Intel GPU or Apple backend: ``"xpu"`` and ``"mps"`` are
        refused with that reason.
    """
    if isinstance(name, jax.Device):
        return name
    if name in (None, "", "auto"):
        name = os.environ.get(ENV_VAR) or None
        if name is None:
            return jax.local_devices()[0]
    match = _DEVICE_RE.match(str(name))
    if not match:
        raise DeviceError(
            f"unknown device {name!r}; expected cpu, cuda[:N] (or gpu[:N]) or tpu[:N] "
            f"(or unset {ENV_VAR} to choose automatically)"
        )
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind in ("xpu", "mps"):
        raise DeviceError(
            f"device {name!r} was requested but JAX has no {kind} backend; run the JAX side on "
            "the CPU (--device cpu)"
        )
    platform = _PLATFORM.get(kind, kind)
    try:
        # This process's own devices: in a job of several processes (jax.distributed),
        # jax.devices() lists every process's, and one of another process cannot be used here.
        devices = jax.local_devices(backend=platform)
    except RuntimeError:
        devices = []
    if index >= len(devices):
        raise DeviceError(
            f"device {name!r} was requested but JAX has {len(devices)} {platform} device(s) "
            f"in this process; its devices are {jax.local_devices()}"
        )
    return devices[index]


def supports_float64(device: Any) -> bool:
    """Whether JAX can compute in float64 on ``device``: it needs ``jax_enable_x64`` (off by
    default, process-wide) and a platform with float64 kernels (not TPU)."""
    return bool(jax.config.read("jax_enable_x64")) and select_device(device).platform != "tpu"


def check_dtype(device: Any, dtype: str) -> None:
    """Raise ``DeviceError`` if ``dtype`` cannot run on ``device`` (float64 with x64 off, TPU)."""
    if dtype not in DTYPES:
        raise DeviceError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "float64" and not supports_float64(device):
        reason = (
            "JAX runs in 32-bit mode; call vae_jax.device.enable_float64() (or "
            "jax.config.update('jax_enable_x64', True)) before creating any array"
            if not jax.config.read("jax_enable_x64")
            else f"device {select_device(device)} has no float64 support; use float32"
        )
        raise DeviceError(f"float64 was requested but {reason}")


def enable_float64() -> None:
    """Switch JAX's 64-bit mode on (process-wide). Arrays created before keep their dtype, so
    call it first; float32 models still compute in float32 (they pass their dtype explicitly)."""
    jax.config.update("jax_enable_x64", True)


def synchronize(device: Any, arrays: Any = None) -> None:
    """Wait until ``arrays`` (any pytree of arrays, e.g. a train state) have been computed.

    JAX dispatches asynchronously and tracks completion per array, not per device, so the work
    to wait for is named by its outputs; ``device`` is taken for the same call as torch's.
    """
    select_device(device)
    if arrays is not None:
        jax.block_until_ready(arrays)
    jax.effects_barrier()


__all__ = [
    "DeviceError",
    "ENV_VAR",
    "check_dtype",
    "enable_float64",
    "select_device",
    "supports_float64",
    "synchronize",
]
