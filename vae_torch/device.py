"""One device selector and the float64 check.

Order: an explicit name, then the ``VAE_TORCH_DEVICE`` environment variable, then the first
available of xpu, cuda, mps, cpu. Devices are asked whether they support float64 (Intel Arc GPUs
and Apple MPS do not) so a float64 request fails with a clear message instead of deep in a kernel.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from vae_common.errors import DeviceError

ENV_VAR = "VAE_TORCH_DEVICE"
_DEVICE_RE = re.compile(r"^(cpu|cuda|xpu|mps)(:\d+)?$")


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return bool(backend is not None and backend.is_available())
    module = getattr(torch, kind, None)
    return bool(module is not None and module.is_available())


def select_device(name: Any = None) -> torch.device:
    """The device to run on.

    Args:
      name: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"xpu"``, ``"mps"``... or None/``"auto"`` to use
        ``$VAE_TORCH_DEVICE`` or else the first available of xpu, cuda, mps, cpu.

    Raises:
      DeviceError: the name is not a device, or that device is not available in this torch build.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "", "auto"):
        name = os.environ.get(ENV_VAR) or None
        if name is None:
            for kind in ("xpu", "cuda", "mps"):
                if _available(kind):
                    return torch.device(kind)
            return torch.device("cpu")
    match = _DEVICE_RE.match(name)
    if not match:
        raise DeviceError(
            f"unknown device {name!r}; expected cpu, cuda[:N], xpu[:N] or mps "
            f"(or unset {ENV_VAR} to choose automatically)"
        )
    kind = match.group(1)
    if not _available(kind):
        raise DeviceError(
            f"device {name!r} was requested but this torch build has no usable {kind}"
        )
    device = torch.device(name)
    if kind in ("cuda", "xpu") and device.index is not None:
        count = getattr(torch, kind).device_count()
        if device.index >= count:
            raise DeviceError(
                f"device {name!r} was requested but only {count} {kind} device(s) exist"
            )
    return device


def supports_float64(device: Any) -> bool:
    """Whether kernels on ``device`` can compute in float64."""
    device = torch.device(device)
    if device.type == "mps":
        return False
    if device.type == "xpu":
        index = device.index if device.index is not None else torch.xpu.current_device()
        return bool(getattr(torch.xpu.get_device_properties(index), "has_fp64", False))
    return True


def check_dtype(device: Any, dtype: Any) -> None:
    """Raise ``DeviceError`` if ``dtype`` cannot run on ``device`` (float64 on Arc or MPS)."""
    from vae_torch.model import resolve_dtype

    if resolve_dtype(dtype) == torch.float64 and not supports_float64(device):
        raise DeviceError(
            f"float64 was requested but device {torch.device(device)} has no float64 support; "
            "use --dtype float32"
        )


def synchronize(device: Any, arrays: Any = None) -> None:
    """Wait for all work queued on ``device`` (a no-op on the CPU, where torch runs eagerly).

    ``arrays`` is taken for the same call as JAX's, which waits per array: a device-wide
    synchronisation covers any tensors computed there.
    """
    device = torch.device(device)
    if device.type in ("cuda", "xpu", "mps"):
        getattr(torch, device.type).synchronize()


__all__ = [
    "DeviceError",
    "ENV_VAR",
    "check_dtype",
    "select_device",
    "supports_float64",
    "synchronize",
]
