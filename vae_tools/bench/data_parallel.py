"""The data-parallel rows of ``vae bench --devices N``: where they run, and how they are checked.

Each row times ``Trainer(devices=N).train_epoch`` on the workload of the 1-device rows: the same
data, weights, batches (global batch B = ``--batch-size``, cut into N slices of B / N) and noise,
the same untimed epochs and timed repeats (median, spread), every epoch ending with the losses
read back (JAX) or all-reduced and read back (torch), so the clock sees finished work on every
device. Its ``efficiency`` is its samples/s over N times the samples/s of the 1-device row of the
same mode, measured in the same run.

Where the N devices come from:
- JAX: in this process when JAX already has N devices of the platform (N GPUs); the rows are
  then interleaved with the 1-device rows. Otherwise one subprocess with N forced host CPU
  devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set before JAX
  starts), sharing that process's CPU cores.
- torch: N ranks started by ``python -m torch.distributed.run`` (gloo on the CPU, nccl on CUDA,
  xccl on XPU), each with ``$OMP_NUM_THREADS`` intra-op threads when it is set, else
  ``max(1, cores // N)`` (``vae_tools.parity_dp.rank_threads``); rank 0 reports. On the CPU
  every rank needs a core of its own.

A subprocess cannot take turns with the rows of this one, so its rows are not interleaved with
them (``interleaved: false`` in the record; its own modes are interleaved among themselves). The
subprocess entry point is ``python -m vae_tools.bench.dp_worker JOB_DIR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.distributed import free_port, usable_cores
from vae_common.errors import ConfigError, DeviceError
from vae_common.training import TrainConfig
from vae_tools.bench.contenders import DP_MODES
from vae_tools.bench.workload import Workload
from vae_tools.parity_dp import rank_threads

# Seconds a subprocess may take (start-up, compilation, the untimed and timed epochs).
RUN_TIMEOUT_S = 3600
# Seconds the torch ranks wait for each other (joining, and every later collective).
RANK_TIMEOUT_S = 300.0
JOB_FILE, DATA_FILE, RESULT_FILE = "job.json", "data.npy", "result.json"


def dp_mode(mode: str, n: int) -> str:
    """The record's mode of the N-device row of ``mode``: ``"epoch"`` -> ``"epoch-dp2"``."""
    return f"{mode}-dp{n}"


def dp_pairs(chosen: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The chosen (backend, mode) pairs that get an N-device row (``DP_MODES``), in order."""
    return [(b, m) for b, m in chosen if m in DP_MODES.get(b, ())]


def check_devices(
    n: Any, chosen: Sequence[tuple[str, str]], device: str, batch_sizes: Sequence[int]
) -> list[tuple[str, str]]:
    """Refuse a ``--devices`` that cannot run, before any work; returns ``dp_pairs(chosen)``.

    Raises:
      ConfigError: ``n`` is not an integer >= 2, no chosen mode has a data-parallel form, or a
        batch size is not a multiple of ``n``.
      DeviceError: torch ranks on the CPU outnumber the cores this process may use, or the
        GPUs are fewer than ``n`` (torch on CUDA or XPU, JAX on CUDA).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ConfigError(
            f"--devices must be an integer of at least 2 (the 1-device rows are always timed), "
            f"got {n!r}"
        )
    n = int(n)
    pairs = dp_pairs(chosen)
    if not pairs:
        names = ", ".join(f"{b}/{m}" for b, modes in DP_MODES.items() for m in modes)
        raise ConfigError(f"--devices {n} adds rows for {names}; none of them is chosen")
    backends = {b for b, _ in pairs}
    if "torch" in backends:
        _check_torch_ranks(n, device)
    if "jax" in backends and device == "cuda":
        import jax

        try:
            found = len(jax.devices("cuda"))
        except RuntimeError:
            found = 0
        if found < n:
            raise DeviceError(f"--devices {n}: JAX has {found} CUDA device(s)")
    odd = [b for b in batch_sizes if b % n]
    if odd:
        raise ConfigError(
            f"batch size(s) {odd} do not split over {n} devices; use multiples of {n}"
        )
    return pairs


def _check_torch_ranks(n: int, device: str) -> None:
    if device == "cpu":
        cores = usable_cores()
        if n > cores:
            raise DeviceError(
                f"--devices {n}: {n} torch ranks on the CPU need a core each, and this process "
                f"may use {cores}"
            )
        return
    import torch

    found = getattr(torch, device).device_count() if hasattr(torch, device) else 0
    if found < n:
        raise DeviceError(f"--devices {n}: torch has {found} {device} device(s)")


def jax_platform(device: str) -> str:
    """The JAX platform of the bench's ``--device`` (JAX has no XPU backend: the CPU then)."""
    return "cuda" if device == "cuda" else "cpu"


def jax_in_process(n: int, device: str) -> bool:
    """True when JAX in this process has ``n`` devices of ``jax_platform(device)``."""
    import jax

    try:
        return len(jax.devices(jax_platform(device))) >= n
    except RuntimeError:
        return False


class LastLosses:
    """A contender's ``run_epoch`` that keeps the mean of the losses of its latest epoch, so
    a record can show that the row trained the same problem as the 1-device row."""

    def __init__(self, run_epoch: Callable[[int], np.ndarray]) -> None:
        self.run_epoch = run_epoch
        self.mean: float | None = None

    def __call__(self, epoch: int) -> np.ndarray:
        losses = self.run_epoch(epoch)
        self.mean = float(np.mean(losses))
        return losses


@dataclass(frozen=True)
class Job:
    """What one subprocess runs: ``modes`` of ``backend`` on ``workload`` (whose ``devices`` is
    N), ``untimed_epochs`` untimed then ``repeats`` timed epochs per mode."""

    backend: str
    modes: tuple[str, ...]
    workload: Workload
    untimed_epochs: int
    repeats: int


def save_job(job: Job, folder: Path) -> None:
    """``job`` as ``folder/job.json`` (the settings) and ``folder/data.npy`` (the images)."""
    w = job.workload
    meta = {
        "backend": job.backend,
        "modes": list(job.modes),
        "untimed_epochs": job.untimed_epochs,
        "repeats": job.repeats,
        "config": w.config.to_json(),
        "train": w.train.to_json(),
        "batch_size": w.batch_size,
        "dtype": w.dtype,
        "device": w.device,
        "seed": w.seed,
        "devices": w.devices,
        "precision": w.precision,
    }
    np.save(folder / DATA_FILE, np.ascontiguousarray(w.data), allow_pickle=False)
    (folder / JOB_FILE).write_text(json.dumps(meta))


def load_job(folder: Path) -> Job:
    """The ``Job`` that ``save_job`` wrote to ``folder``."""
    meta = json.loads((folder / JOB_FILE).read_text())
    w = Workload(
        VAEConfig.from_json(meta["config"]),
        np.load(folder / DATA_FILE, allow_pickle=False),
        int(meta["batch_size"]),
        str(meta["dtype"]),
        str(meta["device"]),
        int(meta["seed"]),
        TrainConfig.from_json(meta["train"]),
        int(meta["devices"]),
        str(meta["precision"]),
    )
    return Job(
        str(meta["backend"]),
        tuple(meta["modes"]),
        w,
        int(meta["untimed_epochs"]),
        int(meta["repeats"]),
    )


def launch(backend: str, n: int, device: str) -> dict[str, Any]:
    """How the N-device rows of ``backend`` run away from this process: ``launch`` (a
    description), ``processes``, ``threads_per_process`` (torch; None for JAX, whose CPU
    devices share XLA's thread pool) and the command line prefix and environment."""
    env = dict(os.environ)
    if backend == "jax":
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        env["JAX_PLATFORMS"] = "cpu"
        return {
            "launch": f"one subprocess, XLA_FLAGS=--xla_force_host_platform_device_count={n}",
            "processes": 1,
            "threads_per_process": None,
            "prefix": [sys.executable],
            "env": env,
        }
    threads = rank_threads(n)
    # One compile thread: inductor's pool of compile workers in every rank oversubscribes the
    # cores; Python tracebacks if a rank dies of a signal.
    env.update(
        OMP_NUM_THREADS=str(threads), TORCHINDUCTOR_COMPILE_THREADS="1", PYTHONFAULTHANDLER="1"
    )
    collective = {"cpu": "gloo", "cuda": "nccl", "xpu": "xccl"}[device]
    return {
        "launch": f"torch.distributed.run --nproc-per-node {n} ({collective}), "
        f"OMP_NUM_THREADS={threads}",
        "processes": n,
        "threads_per_process": threads,
        "prefix": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(n),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        ],
        "env": env,
    }


def run_elsewhere(job: Job, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Run ``job`` in its subprocess (JAX) or ranks (torch) and return what it reported:
    ``timings`` (mode -> ``timing.summarize`` dict), ``last_epoch_mean_loss`` (mode -> float),
    and ``launch``, ``processes``, ``threads_per_process`` (as measured in rank 0 for torch).

    Raises:
      DeviceError: the run failed or did not finish within ``timeout_s`` (the message holds the
        end of its output).
    """
    n = job.workload.devices
    assert n is not None  # a job is always an N-device one
    how = launch(job.backend, n, job.workload.device)
    with tempfile.TemporaryDirectory(prefix="vae-bench-dp-") as tmp:
        folder = Path(tmp)
        save_job(job, folder)
        cmd = [*how["prefix"], "-m", "vae_tools.bench.dp_worker", str(folder)]
        try:
            done = subprocess.run(
                cmd, env=how["env"], capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(
                f"the {n}-device {job.backend} bench run did not finish within {timeout_s:g} s"
            ) from exc
        result_path = folder / RESULT_FILE
        if done.returncode != 0 or not result_path.exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise DeviceError(
                f"the {n}-device {job.backend} bench run failed (exit status "
                f"{done.returncode}):\n{tail}"
            )
        result: dict[str, Any] = json.loads(result_path.read_text())
    result["launch"] = how["launch"]
    result["processes"] = how["processes"]
    result.setdefault("threads_per_process", how["threads_per_process"])
    return result


__all__ = [
    "DP_MODES",
    "Job",
    "LastLosses",
    "check_devices",
    "dp_mode",
    "dp_pairs",
    "jax_in_process",
    "jax_platform",
    "launch",
    "load_job",
    "run_elsewhere",
    "save_job",
]
