"""The torch device selector and float64 policy, with the accelerators mocked; and every other
branch that runs only on an Intel XPU (distributed backend and devices, autocast, the bench's
and ``vae check``'s handling of JAX, which has no XPU backend), with ``torch.xpu`` mocked."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from vae_common.config import VAEConfig
from vae_common.training import TrainConfig
from vae_torch import device as dev
from vae_torch.device import DeviceError, check_dtype, select_device, supports_float64, synchronize
from vae_torch.model import build_model

TINY = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=4)


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


# -- every other branch that runs only on an XPU, with torch.xpu mocked ---------------------------


def test_bf16_autocast_follows_the_device_type(monkeypatch):
    from vae_torch import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "XPU is not available": built here, never entered
        ctx = train.autocast("xpu", "bf16")
    assert (ctx.device, ctx.fast_dtype) == ("xpu", torch.bfloat16)
    # The eager step takes the type from its batch, so an XPU batch gets an XPU autocast.
    kinds = []
    real = train.autocast
    monkeypatch.setattr(
        train, "autocast", lambda kind, precision: kinds.append(kind) or real(kind, precision)
    )
    model = build_model(TINY)
    step = train.make_train_step(model, TrainConfig(), "bf16")
    step(train.make_optimizer(model, TrainConfig()), torch.rand(2, 1, 8, 8), torch.zeros(2, 4), 0)
    assert kinds == ["cpu"]


def test_bf16_on_a_device_without_autocast_is_refused_before_the_model_moves(machine, monkeypatch):
    from vae_torch.train import Trainer

    machine(xpu=True)
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: kind != "xpu")
    with pytest.raises(DeviceError, match="bf16.*autocast on xpu"):
        Trainer(TINY, device="xpu", precision="bf16")


def test_ddp_takes_the_xpu_index_as_its_device_id():
    from vae_torch.train import _ddp_device_ids

    assert _ddp_device_ids(torch.device("xpu", 1)) == [1]
    assert _ddp_device_ids(torch.device("cuda", 0)) == [0]
    assert _ddp_device_ids(torch.device("cpu")) is None


def test_xccl_collectives_reduce_on_the_current_xpu(monkeypatch):
    from vae_torch import distributed

    monkeypatch.setattr(torch.xpu, "current_device", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "xccl")
    assert distributed._collective_device() == torch.device("xpu", 1)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    assert distributed._collective_device() == torch.device("cpu")


def test_local_rank_picks_the_xpu_and_refuses_one_too_many(machine, monkeypatch):
    from vae_torch.distributed import local_device

    machine(xpu=True, xpu_count=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device("xpu") == torch.device("xpu", 1)
    assert local_device("xpu:0") == torch.device("xpu", 0)  # an explicit index wins
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(DeviceError, match="xpu:2.*2 xpu device"):
        local_device("xpu")


def test_jax_refuses_xpu_and_the_bench_runs_its_rows_on_the_cpu():
    from vae_jax.device import select_device as jax_select
    from vae_tools.bench import Workload, make_data
    from vae_tools.bench.contenders import _jax_trainer
    from vae_tools.bench.run import _precision_fields, _record

    with pytest.raises(DeviceError, match="no xpu backend"):
        jax_select("xpu")
    w = Workload(TINY, make_data(TINY, 32), 16, device="xpu", precision="tf32")
    trainer, _ = _jax_trainer(w)
    assert trainer.device.platform == "cpu"
    timing = {"median_s": 1.0, "compile_s": 0.0, "spread": 0.0, "first_epoch_s": 1.0}
    timing["untimed_s"] = 1.0
    assert _record("jax", "epoch", w, timing, 1, 1, 1.0)["device"] == "cpu"
    assert _record("torch", "eager", w, timing, 1, 1, 1.0)["device"] == "xpu"
    assert "no-op on cpu" in _precision_fields("jax", w)["precision_note"]
    assert "no-op on xpu" in _precision_fields("torch", w)["precision_note"]


def test_bench_host_info_names_the_xpu(monkeypatch):
    from vae_tools.bench import host_info

    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    monkeypatch.setattr(torch.xpu, "get_device_name", lambda *a: "Mock Arc A770")
    info = host_info("xpu")
    assert info["gpu"] == "Mock Arc A770" and "JAX has no Intel GPU backend" in info["note"]


def test_vae_check_on_an_xpu_without_float64(machine, xpu_props, monkeypatch):
    import vae_tools.bench
    import vae_tools.parity
    import vae_tools.trajectory
    from tests.test_check import fake_bench, fake_parity
    from vae_tools import check

    machine(xpu=True)
    xpu_props(has_fp64=False)
    monkeypatch.setattr(torch.xpu, "get_device_name", lambda *a: "Mock Arc A770")
    parity, seen = fake_parity()
    run_bench, calls = fake_bench()
    trajectories = []
    monkeypatch.setattr(vae_tools.parity, "check_parity", parity)
    monkeypatch.setattr(vae_tools.bench, "run_bench", run_bench)
    monkeypatch.setattr(
        vae_tools.trajectory,
        "check_trajectory",
        lambda config, **kw: (
            trajectories.append(kw)
            or {"passed": True, "max_rel_diff": 1e-7, "tolerance": 1e-5, "judged": "loss curve"}
            | {"steps": kw["steps"]}
        ),
    )
    report = check.run_check("xpu", quick=True, log=lambda m: None)
    assert report["passed"] and report["device"]["name"] == "Mock Arc A770"
    assert report["device"]["torch"] == "xpu" and report["device"]["jax_platform"] == "cpu"
    by_name = {c["name"]: c for c in report["checks"]}
    for name in ("parity/mlp/float64", "parity/conv/float64"):
        assert by_name[name]["skipped"] and "has no float64" in by_name[name]["reason"]
        assert "Mock Arc A770" in by_name[name]["reason"]
    # float32 and bf16 parity on the XPU, JAX's side on the CPU (said in each).
    assert {(arch, dtype, precision) for arch, dtype, precision, _ in seen} == {
        ("mlp", "float32", "float32"),
        ("mlp", "float32", "bf16"),
        ("conv", "float32", "float32"),
    }
    assert {device for *_, device in seen} == {"xpu"}
    assert "JAX has no backend for xpu" in by_name["parity/mlp/float32"]["reason"]
    # The trajectory falls back to float32, and says why.
    traj = by_name["trajectory/mlp/float32"]
    assert (
        traj["passed"] and "no float64" in traj["reason"] and "JAX has no backend" in traj["reason"]
    )
    assert trajectories[0]["dtype"] == "float32" and trajectories[0]["device"] == "xpu"
    # One benchmark on the XPU (the bench itself runs JAX's rows on the CPU); no CUDA graphs.
    assert len(calls) == 1 and "cudagraph" not in calls[0]["torch"]
    assert by_name["bench/torch/cudagraph"]["skipped"]
    assert "JAX has no backend for xpu" in by_name["bench/jax/epoch"]["reason"]
