"""The torch device selector and float64 policy, with the accelerators mocked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vae_torch import device as dev
from vae_torch.device import DeviceError, check_dtype, select_device, supports_float64, synchronize


@pytest.fixture
def machine(monkeypatch):
    """Pretend which accelerators exist: ``machine(xpu=True, cuda=True, mps=False)``."""
    monkeypatch.delenv(dev.ENV_VAR, raising=False)

    def set_available(xpu=False, cuda=False, mps=False, cuda_count=1, xpu_count=1):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: xpu)
        monkeypatch.setattr(torch.xpu, "device_count", lambda: xpu_count)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    set_available()
    return set_available


@pytest.mark.parametrize(
    "available, expected",
    [
        ({"xpu": True, "cuda": True, "mps": True}, "xpu"),
        ({"cuda": True, "mps": True}, "cuda"),
        ({"mps": True}, "mps"),
        ({}, "cpu"),
    ],
)
@pytest.mark.parametrize("name", [None, "", "auto"])
def test_automatic_order_is_xpu_cuda_mps_cpu(machine, available, expected, name):
    machine(**available)
    assert select_device(name) == torch.device(expected)


def test_environment_variable_overrides_the_automatic_choice(machine, monkeypatch):
    machine(xpu=True, cuda=True)
    monkeypatch.setenv(dev.ENV_VAR, "cpu")
    assert select_device() == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setenv(dev.ENV_VAR, "cuda:0")
    assert select_device() == torch.device("cuda:0")
    # An explicit name wins over the environment.
    assert select_device("xpu") == torch.device("xpu")


def test_environment_variable_naming_an_unavailable_device(machine, monkeypatch):
    monkeypatch.setenv(dev.ENV_VAR, "cuda")
    with pytest.raises(DeviceError, match="'cuda'.*no usable cuda"):
        select_device()


def test_empty_environment_variable_means_automatic(machine, monkeypatch):
    machine(cuda=True)
    monkeypatch.setenv(dev.ENV_VAR, "")
    assert select_device() == torch.device("cuda")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "CPU", "cuda 0", "xpu:-1", "metal"])
def test_unknown_device_names(machine, name):
    with pytest.raises(DeviceError, match=f"unknown device {name!r}"):
        select_device(name)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "xpu", "xpu:1", "mps"])
def test_unavailable_devices(machine, name):
    with pytest.raises(DeviceError, match=f"{name!r} was requested"):
        select_device(name)


def test_device_index_beyond_the_count(machine):
    machine(cuda=True, cuda_count=2, xpu=True, xpu_count=1)
    assert select_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match="only 2 cuda"):
        select_device("cuda:2")
    with pytest.raises(DeviceError, match="only 1 xpu"):
        select_device("xpu:1")


def test_cpu_is_always_available(machine):
    assert select_device("cpu") == torch.device("cpu")


def test_device_error_is_a_runtime_error():
    assert issubclass(DeviceError, RuntimeError)


@pytest.fixture
def xpu_props(monkeypatch):
    """Mock XPU device properties; returns the list of indices queried."""
    queried = []

    def set_props(has_fp64, current=0):
        def props(i):
            queried.append(i)
            if has_fp64 is None:
                return SimpleNamespace(name="old driver")
            return SimpleNamespace(name="mock xpu", has_fp64=has_fp64)

        monkeypatch.setattr(torch.xpu, "get_device_properties", props)
        monkeypatch.setattr(torch.xpu, "current_device", lambda: current)
        return queried

    return set_props


def test_float64_on_xpu_is_asked_of_the_device(xpu_props):
    queried = xpu_props(has_fp64=True, current=1)
    assert supports_float64("xpu") is True
    assert supports_float64(torch.device("xpu:0")) is True
    assert queried == [1, 0], "the current device when no index is given"
    check_dtype("xpu", "float64")

    xpu_props(has_fp64=False)
    assert supports_float64("xpu") is False
    with pytest.raises(DeviceError, match="float64.*xpu.*float32"):
        check_dtype("xpu", "float64")
    check_dtype("xpu", "float32")

    xpu_props(has_fp64=None)
    assert supports_float64("xpu:0") is False


def test_float64_policy_for_mps_and_cpu():
    assert supports_float64("mps") is False
    with pytest.raises(DeviceError, match="float64.*mps"):
        check_dtype("mps", "float64")
    with pytest.raises(DeviceError):
        check_dtype(torch.device("mps"), torch.float64)
    check_dtype("mps", "float32")
    assert supports_float64("cpu") is True
    assert supports_float64(torch.device("cuda")) is True
    check_dtype("cpu", "float64")
    with pytest.raises(ValueError, match="dtype"):
        check_dtype("cpu", "float16")


def test_synchronize(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("cuda"))
    monkeypatch.setattr(torch.xpu, "synchronize", lambda: calls.append("xpu"))
    synchronize("cpu")
    synchronize(torch.device("cuda:0"))
    synchronize("xpu")
    assert calls == ["cuda", "xpu"]
