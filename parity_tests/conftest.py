"""Parity test set-up: float64 JAX, the torch device, and the one tolerance table.

The torch side runs on ``$VAE_TORCH_DEVICE`` (``cpu`` when unset), e.g.
``VAE_TORCH_DEVICE=cuda pytest parity_tests``; a float64 case is skipped on a device without
float64 (Intel Arc XPUs, Apple MPS), its float32 twin still runs there. The JAX side stays on
JAX's default device. TF32 is off on both sides.

Tolerances come from ``vae_common.compare.TOLERANCES`` (re-exported here), the table ``vae parity``
reports against; no test has a tolerance of its own.
"""

from __future__ import annotations

import os

import jax

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402
import torch  # noqa: E402

import vae_torch  # noqa: E402
from vae_common.compare import TOLERANCES  # noqa: E402
from vae_torch.device import ENV_VAR  # noqa: E402

__all__ = ["DTYPES", "TOLERANCES"]

DTYPES = tuple(TOLERANCES)


@pytest.fixture(scope="session")
def torch_device() -> torch.device:
    """The torch device of every parity test: ``$VAE_TORCH_DEVICE`` or the CPU."""
    name = os.environ.get(ENV_VAR) or "cpu"
    try:
        device = vae_torch.select_device(name)
    except vae_torch.DeviceError as exc:
        pytest.fail(f"{ENV_VAR}={name!r}: {exc}", pytrace=False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return device


@pytest.fixture(scope="session")
def parity_dtypes(torch_device) -> tuple[str, ...]:
    """The dtypes the torch device can run: both, or float32 alone without float64 support."""
    if vae_torch.supports_float64(torch_device):
        return DTYPES
    return tuple(d for d in DTYPES if d != "float64")


@pytest.fixture(params=DTYPES)
def dtype(request, parity_dtypes) -> str:
    """Each parity case runs once per dtype the device supports."""
    if request.param not in parity_dtypes:
        pytest.skip(f"{request.param} is not supported on this torch device")
    return request.param


@pytest.fixture
def tolerance(dtype) -> float:
    return TOLERANCES[dtype]


@pytest.fixture(scope="module")
def ieee_subnormals():
    """Subnormal floats on again: ``torch.set_flush_denormal(True)`` changes process-wide
    floating-point state, numpy's included (the torch trainer switches it off after training;
    this guards against anything else leaving it on)."""
    torch.set_flush_denormal(False)
