"""Where the N-device runs of the data-parallel parity happen, and the worker they run.

JAX trains in this process when it already has N devices of the platform, else in a subprocess
with N forced host CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which
must be set before JAX starts); torch always in N processes started by ``torchrun`` (gloo on the
CPU, nccl on CUDA). Each of those processes runs ``worker`` through
``python -m vae_tools.parity_dp worker ...``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from vae_common.distributed import local_torchrun, threads_per_process
from vae_common.errors import DeviceError
from vae_tools.parity_dp_files import load_problem, load_result, save_problem, save_result
from vae_tools.parity_dp_train import Problem, jax_device, train_both_paths

# Seconds allowed for one N-device run (start-up, compilation, 2 x steps).
RUN_TIMEOUT_S = 900


def train_data_parallel(
    backend: str,
    n: int,
    problem: Problem,
    dtype: str,
    device: str | None = "cpu",
    compile: bool = False,
) -> dict[str, dict[str, Any]]:
    """``train_both_paths`` on ``n`` devices: here when this process already has them (JAX),
    otherwise in ``n`` processes (torch, through torchrun) or one process with ``n`` forced CPU
    devices (JAX). Returns rank 0's results."""
    if backend == "jax" and _jax_has(n, jax_device(device)):
        return train_both_paths("jax", problem, dtype, n, jax_device(device), compile)
    with tempfile.TemporaryDirectory(prefix="vae-parity-dp-") as tmp:
        problem_path, result_path = Path(tmp) / "problem.npz", Path(tmp) / "result.npz"
        save_problem(problem, problem_path)
        worker = [
            "-m",
            "vae_tools.parity_dp",
            "worker",
            "--backend",
            backend,
            "--devices",
            str(n),
            "--dtype",
            dtype,
            "--problem",
            str(problem_path),
            "--out",
            str(result_path),
        ]
        worker += ["--device", str(device)] if device else []
        worker += ["--compile"] if compile else []
        env = dict(os.environ)
        if backend == "jax":
            if jax_device(device) not in (None, "cpu"):
                raise DeviceError(f"JAX has fewer than {n} {jax_device(device)} devices here")
            flags = env.get("XLA_FLAGS", "")
            env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
            env["JAX_PLATFORMS"] = "cpu"
            cmd = [sys.executable, *worker]
        else:
            env["OMP_NUM_THREADS"] = str(rank_threads(n))
            cmd = [*local_torchrun(n), *worker]
        try:
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(
                f"the {n}-device {backend} run did not finish within {RUN_TIMEOUT_S} s"
            ) from exc
        if done.returncode != 0 or not result_path.exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise DeviceError(
                f"the {n}-device {backend} run failed (exit status {done.returncode}):\n{tail}"
            )
        return load_result(result_path)


def rank_threads(n: int) -> int:
    """Intra-op threads of each rank of an ``n``-process torch run started here:
    ``$OMP_NUM_THREADS`` when set, else ``max(1, cores // n)``."""
    text = os.environ.get("OMP_NUM_THREADS", "")
    return int(text) if text.isdigit() and int(text) > 0 else threads_per_process(n)


def _jax_has(n: int, platform: str | None) -> bool:
    import jax

    from vae_jax.device import select_device

    kind = select_device(platform).platform
    return len(jax.devices(kind)) >= n


def worker(argv: list[str] | None = None) -> int:
    """One process of an N-device run: JAX (the N devices are this process's) or one torch
    rank (the process group comes from torchrun's environment). Rank 0 writes the results."""
    p = argparse.ArgumentParser(prog="python -m vae_tools.parity_dp worker")
    p.add_argument("--backend", choices=("jax", "torch"), required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--device", default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--problem", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    problem = load_problem(Path(args.problem))
    if args.backend == "jax":
        result = train_both_paths(
            "jax", problem, args.dtype, args.devices, jax_device(args.device), args.compile
        )
        save_result(result, Path(args.out))
        return 0
    from vae_torch import distributed

    distributed.initialize(device=args.device, timeout_s=120)
    try:
        result = train_both_paths(
            "torch", problem, args.dtype, args.devices, args.device, args.compile
        )
        if distributed.process_index() == 0:
            save_result(result, Path(args.out))
    finally:
        distributed.shutdown()
    return 0


__all__ = ["RUN_TIMEOUT_S", "rank_threads", "train_data_parallel", "worker"]
