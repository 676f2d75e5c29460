"""Data parallelism: N devices compute the 1-device numbers, in each backend and across them.

JAX needs its device count before it starts, so its N-device checks run in subprocesses (2 forced
host CPU devices; and 2 processes of 1 device joined by ``jax.distributed``); torch runs 2 gloo
ranks under ``torchrun``. This file is also the script those processes run (``python
tests/test_data_parallel.py MODE OUT``). Bad configurations are checked in this process where
they can be: each must raise one clear error before any work. Batches the devices do not divide
are refused by default and, with ``uneven="replicate"``, computed whole on every device: the
1-device numbers again (checked in the same subprocesses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vae_common.compare import TOLERANCES, TRAJECTORY_TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.distributed import free_port, local_torchrun, threads_per_process
from vae_common.errors import ConfigError, DeviceError, UsageError
from vae_common.spec import init_canonical
from vae_common.trainer_checks import check_split
from vae_common.training import TrainConfig
from vae_tools import parity_dp

ROOT = Path(__file__).resolve().parents[1]
TINY = VAEConfig(input_shape=(1, 4, 4), hidden=(6,), latent_dim=2)
TINY_CONV = VAEConfig(
    input_shape=(1, 4, 4), hidden=(), latent_dim=2, arch="conv", conv_channels=(2,)
)
STEPS, BATCH = 10, 8
F64 = TOLERANCES["float64"]


def problem(config: VAEConfig = TINY) -> parity_dp.Problem:
    return parity_dp.make_problem(config, steps=STEPS, batch_size=BATCH, seed=3, lr=1e-2)


def worst(a: dict, b: dict) -> float:
    """The largest relative difference over every per-step loss and every parameter."""
    curve = max(rel_diff(x, y) for x, y in zip(a["losses"], b["losses"], strict=True))
    assert set(a["params"]) == set(b["params"])
    return max([curve] + [rel_diff(a["params"][n], p) for n, p in b["params"].items()])


def epoch(cls, p: parity_dp.Problem, train: TrainConfig, devices, stream: bool) -> dict:
    """One epoch of ``p`` by ``train_epoch`` on resident or streamed (``stream``) data: the
    (S,) losses and the parameters, float64."""
    t = cls(p.config, train, "float64", device="cpu", devices=devices)
    t.load_state_dict(p.state)
    data = t.put_data(p.data, stream=True, prefetch=1) if stream else t.put_data(p.data)
    losses = t.train_epoch(data, p.batches, p.seed, p.epoch)
    return {
        "losses": np.asarray(losses, np.float64),
        "params": {k: np.asarray(v, np.float64) for k, v in t.state_dict().items()},
    }


def save_epoch(result: dict, path: Path) -> None:
    params = {f"params/{k}": v for k, v in result["params"].items()}
    np.savez(path, losses=result["losses"], **params)


def load_epoch(path: Path) -> dict:
    with np.load(path) as f:
        params = {k.removeprefix("params/"): f[k] for k in f.files if k.startswith("params/")}
        return {"losses": f["losses"], "params": params}


STREAMED = {"dynamic": lambda p: p.epoch_train, "none": lambda p: p.train}

# The uneven path (Trainer(uneven="replicate")): batches of ODD examples, which 2 devices do not
# divide. run_steps: 10 steps of ODD; train_epoch (dynamic binarization) and stream (streamed,
# none): the epoch's indices cut into batches of ODD; last_batch: the epoch's full batches but
# the last (split), then ODD of the last one's examples as the epoch's smaller last step
# (replicated: run_steps with noise drawn in numpy, as vae_tools.run_epochs.train_last_batch).
ODD = 5
UNEVEN = ("run_steps", "train_epoch", "stream", "last_batch")
# Where several JAX processes place an odd batch: given arrays, and streamed batches.
JAX_PROCESS_UNEVEN = ("run_steps", "stream")


def odd_batches(p: parity_dp.Problem) -> np.ndarray:
    """The indices of ``p.batches`` cut into batches of ODD examples (S', ODD)."""
    flat = p.batches.reshape(-1)
    return flat[: len(flat) // ODD * ODD].reshape(-1, ODD)


def uneven(cls, p: parity_dp.Problem, case: str, devices, compile: bool = False) -> dict:
    """``case`` of UNEVEN trained by ``cls`` on ``devices`` (None: one device), replicating
    the batches ``devices`` does not divide: the losses and the parameters, float64."""
    train = p.epoch_train if case == "train_epoch" else p.train
    t = cls(
        p.config,
        train,
        "float64",
        device="cpu",
        compile=compile,
        devices=devices,
        uneven="replicate",
    )
    t.load_state_dict(p.state)
    if case == "run_steps":
        losses = t.run_steps(p.xs[:, :ODD], p.eps[:, :ODD])
    elif case == "last_batch":
        full = t.train_epoch(t.put_data(p.data), p.batches[:-1], p.seed, p.epoch)
        noise = np.random.default_rng([p.seed, p.epoch, 1])
        eps = noise.standard_normal((1, ODD, p.config.latent_dim))
        last = t.run_steps(p.data[p.batches[-1, :ODD]][None], eps)
        losses = np.concatenate([full, last])
    else:
        stream = case == "stream"
        data = t.put_data(p.data, stream=True, prefetch=1) if stream else t.put_data(p.data)
        losses = t.train_epoch(data, odd_batches(p), p.seed, p.epoch)
    return {
        "losses": np.asarray(losses, np.float64),
        "params": {k: np.asarray(v, np.float64) for k, v in t.state_dict().items()},
    }


def refusals(cls, p: parity_dp.Problem) -> dict:
    """What ``cls(devices=2)`` with the default ``uneven`` does with batches of ODD examples in
    ``run_steps``, ``train_epoch`` and a streamed ``train_epoch``: each one's ``ConfigError``
    message (None if it trained), and the steps taken and batches moved to the devices after
    all three (0 and 0: each refused before any work)."""
    t = cls(p.config, p.train, "float64", device="cpu", devices=2)
    t.load_state_dict(p.state)
    moved, put = [0], t._put_batch

    def counted(host: np.ndarray, global_batch: int):
        moved[0] += 1
        return put(host, global_batch)

    t._put_batch = counted
    odd = odd_batches(p)
    calls = {
        "run_steps": lambda: t.run_steps(p.xs[:, :ODD], p.eps[:, :ODD]),
        "train_epoch": lambda: t.train_epoch(t.put_data(p.data), odd, p.seed, p.epoch),
        "stream": lambda: t.train_epoch(t.put_data(p.data, stream=True), odd, p.seed, p.epoch),
    }
    out: dict = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = None
        except ConfigError as exc:
            out[name] = str(exc)
    out["steps"], out["moved"] = t.step, moved[0]
    return out


def assert_refused(refused: dict) -> None:
    for name in ("run_steps", "train_epoch", "stream"):
        assert f"batch size {ODD} does not split over 2 devices" in refused[name], name
        assert "uneven='replicate'" in refused[name], name
    assert (refused["steps"], refused["moved"]) == (0, 0)  # refused before any work


def _env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    # One thread per process (inductor compiles in the process too, without a pool of compile
    # workers); JAX's persistent compilation cache, as conftest.py sets it; Python tracebacks
    # if a worker dies of a signal.
    env.update(
        OMP_NUM_THREADS="1",
        TORCHINDUCTOR_COMPILE_THREADS="1",
        PYTHONFAULTHANDLER="1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(ROOT / ".pytest_cache" / "jax-compilation-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        **extra,
    )
    return env


def _script(mode: str, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-4000:]


# -- configuration errors, in this process ----------------------------------------------------


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2"])
def test_devices_must_be_a_positive_integer(backend, bad):
    cls = parity_dp._trainer_class(backend, "float64")
    with pytest.raises(ConfigError, match="devices must be None or a positive integer"):
        cls(TINY, dtype="float64", devices=bad)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("bad", ["drop", "Replicate", None, True, 1])
def test_uneven_must_be_refuse_or_replicate(backend, bad):
    cls = parity_dp._trainer_class(backend, "float64")
    with pytest.raises(ConfigError, match=r"uneven must be one of \('refuse', 'replicate'\)"):
        cls(TINY, dtype="float64", devices=2, uneven=bad)


def test_check_split_refuses_only_an_uneven_batch_that_is_not_replicated():
    check_split(6, 2, "refuse")
    check_split(5, None, "refuse")  # one device takes any batch
    check_split(5, 2, "replicate")
    with pytest.raises(ConfigError, match=r"batch size 5 does not split over 2 devices; use a "):
        check_split(5, 2, "refuse")


def test_jax_more_devices_than_exist_is_refused_at_construction():
    import jax

    n = len(jax.devices("cpu")) + 1
    cls = parity_dp._trainer_class("jax", "float64")
    with pytest.raises(DeviceError, match=rf"{n} devices were requested but JAX has {n - 1} cpu"):
        cls(TINY, dtype="float64", device="cpu", devices=n)


def test_jax_a_device_index_counts_this_process_devices():
    """``cpu:N`` is this process's N-th device (``jax.local_devices``; in a job of several
    processes ``jax.devices()`` lists the others' too, which this process cannot use)."""
    import jax

    from vae_jax.device import select_device

    n = len(jax.local_devices(backend="cpu"))
    assert select_device("cpu") == select_device(None) == jax.local_devices()[0]
    with pytest.raises(DeviceError, match=rf"JAX has {n} cpu device\(s\) in this process"):
        select_device(f"cpu:{n}")


@pytest.mark.slow
def test_jax_one_device_mesh_is_the_one_device_run():
    # devices=1 takes the sharded code path on a 1-device mesh: the same numbers as devices=None.
    p = problem()
    one = parity_dp.train_both_paths("jax", p, "float64", None, "cpu")
    mesh = parity_dp.train_both_paths("jax", p, "float64", 1, "cpu")
    for path in parity_dp.PATHS:
        assert worst(mesh[path], one[path]) <= F64, path


def test_torch_needs_a_process_group_of_the_given_size(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # keep this process's thread count
    cls = parity_dp._trainer_class("torch", "float64")
    with pytest.raises(ConfigError, match=r"devices=2\) needs .* world size 2, found no process"):
        cls(TINY, dtype="float64", devices=2)
    # One device needs no process group; free_bits (refused over several ranks) is fine on one.
    floored = TrainConfig(free_bits=0.1)
    assert cls(TINY, floored, "float64", devices=1).world == 1
    from vae_torch import distributed

    distributed.initialize(f"127.0.0.1:{free_port()}", 1, 0, timeout_s=30, device="cpu")
    try:
        with pytest.raises(ConfigError, match="world size 3, found a process group of 1"):
            cls(TINY, dtype="float64", devices=3)
        assert cls(TINY, floored, "float64", devices=1).world == 1  # a group of one: one device
        # A group of one is the 1-device run.
        p = problem()
        assert distributed.all_ranks_ok(True) and not distributed.all_ranks_ok(False)
        assert distributed.all_ranks_agree("x")
        one = parity_dp.train_both_paths("torch", p, "float64", None, "cpu")
        group = parity_dp.train_both_paths("torch", p, "float64", 1, "cpu")
        for path in parity_dp.PATHS:
            assert worst(group[path], one[path]) == 0.0, path
    finally:
        distributed.shutdown()
    assert distributed.process_count() == 1


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_unreachable_coordinator_is_a_device_error_within_the_time_limit(backend):
    import importlib

    distributed = importlib.import_module(f"vae_{backend}.distributed")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(DeviceError, match=rf"process 1 of 2: the coordinator {address} did not"):
        distributed.initialize(address, 2, 1, timeout_s=1.0, device="cpu")
    assert time.monotonic() - start < 10
    assert distributed.process_count() == 1


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coordinator="localhost"), "host:port"),
        (dict(coordinator="h:0"), "host:port"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), r"\[0, 2\)"),
        (dict(coordinator="h:1", num_processes=2, process_id=0, timeout_s=0), "timeout_s"),
    ],
)
def test_bad_distributed_settings_are_config_errors(backend, kwargs, message):
    import importlib

    distributed = importlib.import_module(f"vae_{backend}.distributed")
    kwargs = {"num_processes": 2, "process_id": 1, "timeout_s": 1.0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        distributed.initialize(**kwargs)


def test_torch_without_torchrun_environment_names_what_is_missing(monkeypatch):
    from vae_torch import distributed

    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT"):
        distributed.initialize()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1234")
    with pytest.raises(ConfigError, match="WORLD_SIZE is not set"):
        distributed.initialize()


class _FakeAccelerator:
    """Stands in for ``torch.cuda`` / ``torch.xpu``: two devices, the current one recorded."""

    def __init__(self) -> None:
        self.current: object = None

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 2

    def set_device(self, device: object) -> None:
        self.current = device

    def current_device(self) -> int:
        return 1


@pytest.mark.parametrize("kind, backend", [("xpu", "xccl"), ("cuda", "nccl")])
def test_torch_backend_and_device_follow_the_accelerator(monkeypatch, kind, backend):
    import torch

    from vae_torch import distributed

    fake = _FakeAccelerator()
    monkeypatch.setattr(torch, kind, fake)
    calls: list[dict] = []
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda b, **kw: calls.append(dict(kw, backend=b))
    )
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    distributed.initialize("10.0.0.1:29500", 2, 0, timeout_s=7, device=kind)
    (call,) = calls
    assert call["backend"] == backend
    assert (call["world_size"], call["rank"]) == (2, 0)
    assert call["init_method"] == "tcp://10.0.0.1:29500"
    assert call["timeout"].total_seconds() == 7
    assert fake.current == torch.device(kind, 1)  # LOCAL_RANK picks the device
    assert threads == [threads_per_process(2)]
    assert distributed.backend_for(kind) == backend


@pytest.mark.parametrize("kind", ["xpu", "cuda"])
def test_torch_trainer_takes_the_local_rank_device_only_over_several_ranks(monkeypatch, kind):
    """Under torchrun (LOCAL_RANK 1) a 1-rank trainer keeps the device as given ("cuda": the
    current one); a rank of several takes the device of its LOCAL_RANK; an index given wins."""
    import torch

    from vae_torch.data_parallel import process_device

    monkeypatch.setattr(torch, kind, _FakeAccelerator())
    monkeypatch.delenv("VAE_TORCH_DEVICE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device(kind, 1) == torch.device(kind)
    assert process_device(kind, 2) == torch.device(kind, 1)
    assert process_device(f"{kind}:0", 2) == torch.device(kind, 0)
    assert process_device("cpu", 2) == torch.device("cpu")


def test_torch_backend_for_cpu_and_mps():
    from vae_torch import distributed

    assert distributed.backend_for("cpu") == "gloo"
    with pytest.raises(DeviceError, match="no backend for mps"):
        distributed.backend_for("mps")


def test_threads_per_process_share_the_cores(monkeypatch):
    import vae_common.distributed as d

    monkeypatch.setattr(d, "usable_cores", lambda: 16)
    assert [d.threads_per_process(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


def test_parity_data_parallel_refuses_bad_sizes():
    with pytest.raises(UsageError, match="at least 2"):
        parity_dp.check_data_parallel(TINY, 1)
    with pytest.raises(UsageError, match="batch size 9 does not split over 2"):
        parity_dp.check_data_parallel(TINY, 2, batch_size=9)


def test_cli_exit_status_follows_the_report(monkeypatch, capsys):
    from vae_tools.cli import main

    seen: dict = {}

    def fake(config, n, **kwargs):
        seen.update(kwargs, n=n, config=config)
        c = {"max_rel_diff": 2e-12, "tolerance": 1e-12, "passed": False}
        return {
            "dtype": "float64",
            "devices": n,
            "steps": kwargs["steps"],
            "jax": {"run_steps": c, "train_epoch": c},
            "torch": {"run_steps": c, "train_epoch": c},
            "jax_vs_torch": {"1": c, "N": c},
            "max_rel_diff": 2e-12,
            "tolerance": 1e-12,
            "passed": False,
        }

    monkeypatch.setattr(parity_dp, "check_data_parallel", fake)
    args = ["parity", "--data-parallel", "3", "--input-shape", "1,4,4", "--hidden", "6"]
    assert main([*args, "--json", "--batch-size", "6"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    assert seen["n"] == 3 and seen["steps"] == 10 and seen["batch_size"] == 6
    assert main(args + ["--steps", "4"]) == 1
    assert "FAILED" in capsys.readouterr().out and seen["steps"] == 4


# -- N devices against one ----------------------------------------------------------------------


@pytest.mark.slow
def test_jax_two_devices_equal_one(tmp_path):
    # One process with 2 forced host devices: the 1-device and the 2-device trainers side by side.
    out = tmp_path / "jax.json"
    _finish(
        [_script("jax-devices", out, _env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))]
    )
    r = json.loads(out.read_text())
    assert r["devices"] == 2
    assert r["sharded_draw_equal"] is True  # threefry gives each row the same numbers
    for case, figure in r["worst"].items():
        assert figure <= F64, (case, figure)
    assert set(r["worst"]) == {"mlp/run_steps", "mlp/train_epoch", "conv/train_epoch"}
    assert r["state_replicated"] is True
    assert r["batch_split"] is True
    assert r["all_reduce_in_epoch"] is True
    assert "3 devices were requested but JAX has 2 cpu" in r["too_many_error"]
    assert r["evaluate_odd_batch"] is True
    assert_refused(r["refused"])
    # uneven="replicate": the 1-device numbers, batches of 5 replicated (compiled so), 8 split.
    assert set(r["uneven_worst"]) == {*UNEVEN, "conv/train_epoch"}
    for case, figure in r["uneven_worst"].items():
        assert figure <= F64, (case, figure)
    assert r["odd_replicated"] is True and r["even_split"] is True
    assert r["whole_runs"] == [[2, ODD, *TINY.input_shape]]
    # Streamed on 2 devices = resident on 1, with and without dynamic binarization.
    assert set(r["stream_worst"]) == {"dynamic", "none"}
    for binarize, figure in r["stream_worst"].items():
        assert figure <= F64, (binarize, figure)


@pytest.mark.slow
def test_jax_two_processes_equal_one_device(tmp_path):
    # Two hosts in miniature: two processes of one CPU device each, joined by jax.distributed,
    # each feeding its own rows of every batch.
    address = f"127.0.0.1:{free_port()}"
    procs = [
        _script("jax-process", tmp_path / f"rank{i}.npz", _env(), address, str(i)) for i in (0, 1)
    ]
    _finish(procs)
    p = problem()
    one = parity_dp.train_both_paths("jax", p, "float64", None, "cpu")
    cls = parity_dp._trainer_class("jax", "float64")
    for i in (0, 1):
        got = parity_dp.load_result(tmp_path / f"rank{i}.npz")
        for path in parity_dp.PATHS:
            assert worst(got[path], one[path]) <= F64, (i, path)
        stream = load_epoch(tmp_path / f"rank{i}.npz.stream.npz")
        assert worst(stream, one["train_epoch"]) <= F64, (i, "stream")
        for case in JAX_PROCESS_UNEVEN:
            got_case = load_epoch(tmp_path / f"rank{i}.npz.uneven-{case}.npz")
            assert worst(got_case, uneven(cls, p, case, None)) <= F64, (i, case)
        flags = json.loads((tmp_path / f"rank{i}.npz.json").read_text())
        assert "different model, training or dtype settings" in flags.pop("settings_error")
        assert "different model, training or dtype settings" in flags.pop("uneven_error")
        assert "given different weights" in flags.pop("weights_error")
        assert flags.pop("alone") == ["True", i + 1]
        assert flags == {"mixed_ok": False, "all_ok": True, "agree": True, "disagree": False}


@pytest.mark.slow
def test_torch_two_ranks_errors_and_compiled_step(tmp_path):
    import shutil

    compile_too = shutil.which(os.environ.get("CXX", "g++")) is not None
    out = tmp_path / "torch.npz"
    cmd = [
        *local_torchrun(2),
        __file__,
        "torch-ranks",
        str(out),
        "compile" if compile_too else "eager",
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    checks = json.loads(out.with_suffix(".json").read_text())
    assert checks["mixed_ok"] is False and checks["all_ok"] is True
    assert_refused(checks["refused"])
    assert "different model, training or dtype settings" in checks["settings_error"]
    assert "different model, training or dtype settings" in checks["uneven_error"]
    assert "given different weights" in checks["weights_error"]
    assert "free_bits > 0 is not supported" in checks["free_bits_error"]
    assert checks["threads"] == 1
    p = problem()
    one = parity_dp.train_both_paths("torch", p, "float64", None, "cpu")
    got = parity_dp.load_result(out)
    for path in parity_dp.PATHS:
        # eager ranks under DDP, or the compiled step with its explicit all-reduce
        assert worst(got[path], one[path]) <= F64, path
    assert checks["compiled"] is compile_too
    cls = parity_dp._trainer_class("torch", "float64")
    for binarize, train in STREAMED.items():
        streamed = load_epoch(out.with_suffix(f".stream-{binarize}.npz"))
        assert worst(streamed, epoch(cls, p, train(p), None, False)) <= F64, binarize
    # uneven="replicate": batches of 5 on 2 ranks are the 1-device steps (eager and compiled).
    for case in UNEVEN + (("compiled",) if compile_too else ()):
        got_case = load_epoch(out.with_suffix(f".uneven-{case}.npz"))
        reference = uneven(cls, p, "run_steps" if case == "compiled" else case, None)
        assert worst(got_case, reference) <= F64, case


@pytest.mark.slow
def test_cli_reports_both_backends_and_across(capsys):
    from vae_tools.cli import main

    argv = ["parity", "--data-parallel", "2", "--json", "--input-shape", "1,4,4"]
    code = main([*argv, "--hidden", "6", "--latent-dim", "2", "--batch-size", "8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert (r["devices"], r["steps"], r["dtype"]) == (2, 10, "float64")
    for backend in ("jax", "torch"):
        for path in parity_dp.PATHS:
            c = r[backend][path]
            assert c["tolerance"] == F64 and c["max_rel_diff"] <= F64 and c["passed"], (
                backend,
                path,
            )
            assert c["judged"] == "params, loss curve"
            assert len(c["loss_curve"]["a"]) == 10
    for k in ("1", "N"):
        c = r["jax_vs_torch"][k]
        assert c["tolerance"] == TRAJECTORY_TOLERANCES["float64"] and c["passed"], k
    assert r["passed"] is True
    assert r["max_rel_diff"] <= r["tolerance"]


# -- the processes the slow tests start -----------------------------------------------------------


def _jax_devices(out: Path) -> None:
    import jax
    import jax.numpy as jnp

    import vae_jax.train
    from vae_jax.distributed import data_mesh

    p = problem()
    report: dict = {"devices": len(jax.devices()), "worst": {}}
    for name, config in (("mlp", TINY), ("conv", TINY_CONV)):
        pc = problem(config)
        if name == "conv":
            # Conv models on the CPU take the per-step path (one jitted step per batch).
            pc = parity_dp.Problem(**{**pc.__dict__, "batches": pc.batches[:3]})
        paths = parity_dp.PATHS if name == "mlp" else ("train_epoch",)
        one = parity_dp.train_both_paths("jax", pc, "float64", None, "cpu", paths=paths)
        two = parity_dp.train_both_paths("jax", pc, "float64", 2, "cpu", paths=paths)
        for path in paths:
            report["worst"][f"{name}/{path}"] = worst(two[path], one[path])
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = data_mesh(2, "cpu")
    key = jax.random.key(11)
    whole = jax.random.normal(key, (BATCH, 3), jnp.float64)
    split = jax.jit(
        lambda k: jax.random.normal(k, (BATCH, 3), jnp.float64),
        out_shardings=NamedSharding(mesh, P("data")),
    )(key)
    report["sharded_draw_equal"] = bool(np.array_equal(np.asarray(whole), np.asarray(split)))
    t = vae_jax.train.Trainer(TINY, p.epoch_train, "float64", device="cpu", devices=2)
    t.load_state_dict(p.state)
    leaves = jax.tree.leaves(t.state)
    report["state_replicated"] = all(a.sharding.is_fully_replicated for a in leaves)
    data = t.put_data(p.data)
    key_d = t._place.key(vae_jax.train.epoch_key(0, 1))
    lowered = t._steps.epoch.lower(t.state, data, t._place.batches(p.batches), key_d)
    compiled = lowered.compile()
    report["batch_split"] = compiled.input_shardings[0][2].spec == P(None, "data")
    report["all_reduce_in_epoch"] = "all-reduce" in compiled.as_text()
    report["evaluate_odd_batch"] = bool(np.isfinite(t.evaluate(p.data[:7])["neg_elbo"]))
    cls = vae_jax.train.Trainer
    report["refused"] = refusals(cls, p)
    # uneven="replicate": odd batches whole on both devices, even ones still split.
    report["uneven_worst"] = {
        case: worst(uneven(cls, p, case, 2), uneven(cls, p, case, None)) for case in UNEVEN
    }
    pc = problem(TINY_CONV)  # the per-step path of conv models on the CPU
    pc = parity_dp.Problem(**{**pc.__dict__, "batches": pc.batches[:2]})
    two, one = (uneven(cls, pc, "train_epoch", d) for d in (2, None))
    report["uneven_worst"]["conv/train_epoch"] = worst(two, one)
    t = cls(TINY, p.train, "float64", device="cpu", devices=2, uneven="replicate")
    t.load_state_dict(p.state)
    place, steps = t._on(ODD)
    odd = steps.run.lower(t.state, place.steps(p.xs[:, :ODD]), place.steps(p.eps[:, :ODD]))
    report["odd_replicated"] = odd.compile().input_shardings[0][1].is_fully_replicated
    even_place, even_steps = t._on(BATCH)
    even = even_steps.run.lower(t.state, even_place.steps(p.xs), even_place.steps(p.eps))
    report["even_split"] = even.compile().input_shardings[0][1].spec == P(None, "data")
    # run_steps picks the path by the batch axis of xs (S, B, ...): whole for B = ODD only.
    whole_runs, run_whole = [], t._whole_steps.run
    t._whole_steps = t._whole_steps._replace(
        run=lambda *a: whole_runs.append(list(a[1].shape)) or run_whole(*a)
    )
    t.run_steps(p.xs[:2], p.eps[:2])
    t.run_steps(p.xs[:2, :ODD], p.eps[:2, :ODD])
    report["whole_runs"] = whole_runs
    # Streamed data on the mesh: each device gets its rows of every host-formed batch.
    report["stream_worst"] = {
        b: worst(epoch(cls, p, train(p), 2, True), epoch(cls, p, train(p), None, False))
        for b, train in STREAMED.items()
    }
    try:
        vae_jax.train.Trainer(TINY, dtype="float64", device="cpu", devices=3)
    except DeviceError as exc:
        report["too_many_error"] = str(exc)
    out.write_text(json.dumps(report))


def _jax_process(out: Path, address: str, rank: int) -> None:
    from vae_jax import distributed

    distributed.initialize(address, 2, rank, timeout_s=120, device="cpu")
    try:
        result = parity_dp.train_both_paths("jax", problem(), "float64", 2, "cpu")
        parity_dp.save_result(result, out)
        # Streamed: each process forms and feeds only its own rows of every batch.
        cls = parity_dp._trainer_class("jax", "float64")
        save_epoch(epoch(cls, problem(), problem().epoch_train, 2, True), Path(f"{out}.stream.npz"))
        for case in JAX_PROCESS_UNEVEN:  # each process feeds the whole odd batch
            save_epoch(uneven(cls, problem(), case, 2), Path(f"{out}.uneven-{case}.npz"))
        flags = {
            "mixed_ok": distributed.all_ranks_ok(rank == 0),
            "all_ok": distributed.all_ranks_ok(True),
            "agree": distributed.all_ranks_agree("same"),
            "disagree": distributed.all_ranks_agree(f"rank {rank}"),
        }
        import vae_jax.train

        Trainer = vae_jax.train.Trainer
        try:
            Trainer(TINY, TrainConfig(lr=1e-3 * (rank + 1)), "float64", device="cpu", devices=2)
        except ConfigError as exc:
            flags["settings_error"] = str(exc)
        try:
            Trainer(
                TINY, dtype="float64", device="cpu", devices=2, uneven=("refuse", "replicate")[rank]
            )
        except ConfigError as exc:
            flags["uneven_error"] = str(exc)
        t = Trainer(TINY, dtype="float64", device="cpu", devices=2)
        try:
            t.load_state_dict(init_canonical(TINY, rank))
        except ConfigError as exc:
            flags["weights_error"] = str(exc)
        # A one-device trainer in each process trains alone: its own settings, weights and data
        # on this process's device, nothing compared across the processes.
        alone = Trainer(TINY, TrainConfig(lr=1e-3 * (rank + 1)), "float64", device="cpu")
        alone.load_state_dict(init_canonical(TINY, rank))
        p = problem()
        losses = alone.run_steps(p.xs[: rank + 1], p.eps[: rank + 1])
        flags["alone"] = [str(alone.device.process_index == rank), len(losses)]
        Path(f"{out}.json").write_text(json.dumps(flags))
    finally:
        distributed.shutdown()


def _torch_ranks(out: Path, mode: str) -> None:
    import torch

    import vae_torch.train
    from vae_torch import distributed

    distributed.initialize(timeout_s=120, device="cpu")
    rank = distributed.process_index()
    checks: dict = {"threads": torch.get_num_threads()}
    checks["mixed_ok"] = distributed.all_ranks_ok(rank == 0)
    checks["all_ok"] = distributed.all_ranks_ok(True)
    p = problem()
    Trainer = vae_torch.train.Trainer
    checks["refused"] = refusals(Trainer, p)
    t = Trainer(TINY, p.train, "float64", device="cpu", devices=2)
    t.load_state_dict(p.state)
    try:
        Trainer(TINY, TrainConfig(lr=1e-3 * (rank + 1)), "float64", device="cpu", devices=2)
    except ConfigError as exc:
        checks["settings_error"] = str(exc)
    try:
        Trainer(
            TINY, dtype="float64", device="cpu", devices=2, uneven=("refuse", "replicate")[rank]
        )
    except ConfigError as exc:
        checks["uneven_error"] = str(exc)
    try:
        t.load_state_dict(init_canonical(TINY, rank))
    except ConfigError as exc:
        checks["weights_error"] = str(exc)
    try:
        Trainer(TINY, TrainConfig(free_bits=0.1), "float64", device="cpu", devices=2)
    except ConfigError as exc:
        checks["free_bits_error"] = str(exc)
    checks["compiled"] = mode == "compile"
    result = parity_dp.train_both_paths("torch", p, "float64", 2, "cpu", compile=checks["compiled"])
    # Streamed: each rank gets its rows (the whole batch under dynamic binarization).
    streamed = {b: epoch(Trainer, p, train(p), 2, True) for b, train in STREAMED.items()}
    # Odd batches replicated: every rank all of them; and the compiled step's own all-reduce.
    odd = {case: uneven(Trainer, p, case, 2) for case in UNEVEN}
    if checks["compiled"]:
        odd["compiled"] = uneven(Trainer, p, "run_steps", 2, compile=True)
    if rank == 0:
        parity_dp.save_result(result, out)
        for b, r in streamed.items():
            save_epoch(r, out.with_suffix(f".stream-{b}.npz"))
        for case, r in odd.items():
            save_epoch(r, out.with_suffix(f".uneven-{case}.npz"))
        out.with_suffix(".json").write_text(json.dumps(checks))
    distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    mode, target = sys.argv[1], Path(sys.argv[2])
    if mode == "jax-devices":
        _jax_devices(target)
    elif mode == "jax-process":
        _jax_process(target, sys.argv[3], int(sys.argv[4]))
    elif mode == "torch-ranks":
        _torch_ranks(target, sys.argv[3])
        # The results are written and the process group is gone. Skip the interpreter's
        # teardown: a C++ worker thread (gloo's, inductor's) still joinable when static objects
        # are destroyed aborts the process ("terminate called without an active exception"),
        # which rank 1 hit about once in seven runs, after its work had finished.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    else:
        sys.exit(f"unknown mode {mode!r}")
