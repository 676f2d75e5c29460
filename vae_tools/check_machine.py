"""What ``vae check`` says about the machine: package versions, device names, where JAX runs,
and the precision switches the figures were computed under."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from vae_common.errors import DeviceError
from vae_common.precision import JAX_MATMUL_PRECISION

# The distributions whose versions the report names (None when one is not installed).
PACKAGES = ("numpy", "jax", "jaxlib", "flax", "optax", "torch", "safetensors", "vae-twin")


def versions() -> dict[str, str | None]:
    """Python's version and each of ``PACKAGES``' installed version (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """torch's name for ``device`` (``torch.cuda.get_device_name``, ``torch.xpu.
    get_device_name``), or the CPU model."""
    import torch

    device = torch.device(device)
    if device.type in ("cuda", "xpu"):
        index = device.index if device.index is not None else 0
        return str(getattr(torch, device.type).get_device_name(index))
    return cpu_model()


def jax_device_for(device: str) -> tuple[Any, str | None]:
    """The JAX device that stands for ``device`` and, when it is the CPU instead, why: JAX has
    no Intel GPU backend, and a CUDA device needs JAX's CUDA build (``jax[cuda]``)."""
    from vae_jax.device import select_device

    if device == "xpu":
        return select_device("cpu"), "JAX has no backend for xpu: its side runs on the CPU"
    try:
        return select_device(device), None
    except DeviceError:
        return select_device("cpu"), (
            f"JAX has no {device} device here (is JAX's CUDA build, jax[cuda], installed?): "
            "its side runs on the CPU"
        )


def precision_settings() -> dict[str, Any]:
    """What the figures were computed with: the process-wide switches as the checks leave them
    and the policy each part of the check ran under."""
    import jax
    import torch

    return {
        "parity_and_trajectory": (
            "float64 and float32 with TF32 off: torch.backends.cuda.matmul.allow_tf32 = "
            "torch.backends.cudnn.allow_tf32 = False, jax.default_matmul_precision("
            f"{JAX_MATMUL_PRECISION['float32']!r}); bf16: torch.autocast / Flax bfloat16 layers "
            "over float32 weights"
        ),
        "bench": "float32 training precision (TF32 off in every row)",
        "torch": {
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "jax": {
            # A context-manager flag: jax.config.read refuses it, and the stubs lack it.
            "default_matmul_precision": str(
                getattr(jax.config, "jax_default_matmul_precision")  # noqa: B009
            ),
            "enable_x64": bool(jax.config.read("jax_enable_x64")),
        },
    }


__all__ = [
    "PACKAGES",
    "cpu_model",
    "device_name",
    "jax_device_for",
    "precision_settings",
    "versions",
]
