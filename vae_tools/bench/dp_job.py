"""The job of a data-parallel bench row that runs away from this process: its files, how its
subprocess (JAX) or ranks (torch) are launched, and the run itself.

The subprocess entry point is ``python -m vae_tools.bench.dp_worker JOB_DIR``; it reads the job
``save_job`` wrote and writes ``JOB_DIR/result.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.distributed import local_torchrun
from vae_common.errors import DeviceError
from vae_common.training import TrainConfig
from vae_tools.bench.workload import Workload
from vae_tools.parity_dp_launch import rank_threads

# Seconds a subprocess may take (start-up, compilation, the untimed and timed epochs).
RUN_TIMEOUT_S = 3600
# Seconds the torch ranks wait for each other (joining, and every later collective).
RANK_TIMEOUT_S = 300.0
JOB_FILE, DATA_FILE, RESULT_FILE = "job.json", "data.npy", "result.json"


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
        "prefix": local_torchrun(n),
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
    "DATA_FILE",
    "JOB_FILE",
    "RANK_TIMEOUT_S",
    "RESULT_FILE",
    "RUN_TIMEOUT_S",
    "Job",
    "launch",
    "load_job",
    "run_elsewhere",
    "save_job",
]
