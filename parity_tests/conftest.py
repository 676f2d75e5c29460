"""Parity test set-up: the torch device and the one tolerance table (float64 JAX, threads and
the ``ieee_subnormals`` fixture come from the root ``conftest.py``).

The torch side runs on ``$VAE_TORCH_DEVICE`` (``cpu`` when unset), e.g.
``VAE_TORCH_DEVICE=cuda pytest parity_tests``; a float64 case is skipped on a device without
float64 (Intel Arc XPUs, Apple MPS), its float32 twin still runs there. The JAX side stays on
JAX's default device. TF32 is off on both sides.

Tolerances come from ``vae_common.compare.TOLERANCES`` (re-exported here), the table ``vae parity``
reports against; no test has a tolerance of its own.
"""

from __future__ import annotations

import os

import pytest
import torch

import vae_torch
from vae_common.compare import TOLERANCES
from vae_torch.device import ENV_VAR

__all__ = ["DTYPES", "TOLERANCES"]

# The array dtypes parity runs in; bf16 is a training precision over float32 arrays, judged
# against TOLERANCES['bf16'] in tests/test_precision.py.
DTYPES = ("float64", "float32")


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
