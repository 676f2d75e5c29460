"""Data-parallel parity: N devices against one, in each backend, and JAX against torch.

One problem (weights, 10 batches and their noise, a small dataset with its epoch of batch
indices) trains from the same start on 1 and on N devices with each backend, through the
``Trainer``'s two paths: ``run_steps`` (given batches and noise, comparable across backends) and
``train_epoch`` (batches gathered by index, noise and dynamic binarization drawn from the seed,
comparable within a backend). Every per-step loss and every final parameter is compared by name.

The N-device runs happen where N devices exist: JAX in this process when it already has N
devices of the platform, else in a subprocess with N forced host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set before JAX starts);
torch always in N processes started by ``torchrun`` (gloo on the CPU, nccl on CUDA).
``python -m vae_tools.parity_dp worker ...`` is the entry point of those processes.

The 1-device torch reference runs with the ranks' intra-op thread count (``rank_threads``): on
the CPU the thread count alone changes how the matrix products are blocked, and Adam amplifies
that rounding in near-zero gradients, so a 1-thread and a 2-thread run of the same 1-device
training differ after 10 steps as much as the tolerance (figures in the README).

The parts live beside this module: ``parity_dp_train`` (the problem, training in this process),
``parity_dp_files`` (the problem and result files), ``parity_dp_launch`` (the subprocesses and
their ``worker``) and ``parity_dp_report`` (comparisons, the table); their public names are
importable from here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import numpy as np

from vae_common.compare import TOLERANCES, TRAJECTORY_TOLERANCES
from vae_common.config import VAEConfig
from vae_common.errors import UsageError
from vae_tools.parity_dp_files import load_problem, load_result, save_problem, save_result
from vae_tools.parity_dp_launch import RUN_TIMEOUT_S, rank_threads, train_data_parallel, worker
from vae_tools.parity_dp_report import compare_runs, format_table
from vae_tools.parity_dp_train import (
    PATHS,
    Problem,
    jax_device,
    make_problem,
    torch_threads,
    train_both_paths,
)
from vae_tools.parity_dp_train import _trainer_class as _trainer_class  # the tests use it


def check_data_parallel(
    config: VAEConfig,
    n: int = 2,
    dtype: str = "float64",
    steps: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 1e-3,
    beta: float = 1.0,
    state: dict[str, np.ndarray] | None = None,
    device: str | None = "cpu",
    compile: bool = False,
) -> dict[str, Any]:
    """The N-device vs 1-device check in each backend and JAX vs torch.

    Returns ``{"dtype", "devices", "steps", "batch_size", "jax": {path: comparison},
    "torch": {path: comparison}, "jax_vs_torch": {"1": comparison, "N": comparison},
    "max_rel_diff", "tolerance", "passed"}``; each comparison is ``compare_runs``'s dict (``a``
    the N-device or JAX run, ``b`` the reference). Within a backend the tolerance is
    ``TOLERANCES[dtype]``; across backends (different kernels for 10 Adam steps) the trajectory
    tolerance. The top level holds the worst figure, the largest tolerance and whether every
    comparison passed its own.
    """
    if n < 2:
        raise UsageError(f"--data-parallel needs at least 2 devices, got {n}")
    if batch_size % n:
        raise UsageError(f"batch size {batch_size} does not split over {n} devices")
    problem = make_problem(config, steps, batch_size, seed, lr, beta, state)
    judge_params = dtype in TRAJECTORY_TOLERANCES
    within = TOLERANCES[dtype]
    across = TRAJECTORY_TOLERANCES.get(dtype, TOLERANCES[dtype])
    runs: dict[str, dict[str, Any]] = {}
    for backend in ("jax", "torch"):
        here = jax_device(device) if backend == "jax" else device
        threads = torch_threads(rank_threads(n)) if backend == "torch" else contextlib.nullcontext()
        with threads:
            single = train_both_paths(backend, problem, dtype, None, here, compile)
        multi = train_data_parallel(backend, n, problem, dtype, device, compile)
        runs[backend] = {"1": single, "N": multi}
    report: dict[str, Any] = {"dtype": dtype, "devices": n, "steps": steps}
    report["batch_size"] = batch_size
    for backend in ("jax", "torch"):
        report[backend] = {
            path: compare_runs(
                runs[backend]["N"][path], runs[backend]["1"][path], dtype, within, judge_params
            )
            for path in PATHS
        }
    report["jax_vs_torch"] = {
        k: compare_runs(
            runs["jax"][k]["run_steps"], runs["torch"][k]["run_steps"], dtype, across, judge_params
        )
        for k in ("1", "N")
    }
    comparisons = [c for b in ("jax", "torch") for c in report[b].values()]
    comparisons += list(report["jax_vs_torch"].values())
    report["max_rel_diff"] = max(c["max_rel_diff"] for c in comparisons)
    report["tolerance"] = max(c["tolerance"] for c in comparisons)
    report["passed"] = all(c["passed"] for c in comparisons)
    return report


__all__ = [
    "PATHS",
    "RUN_TIMEOUT_S",
    "Problem",
    "check_data_parallel",
    "compare_runs",
    "format_table",
    "jax_device",
    "load_problem",
    "load_result",
    "make_problem",
    "rank_threads",
    "save_problem",
    "save_result",
    "torch_threads",
    "train_both_paths",
    "train_data_parallel",
    "worker",
]


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m vae_tools.parity_dp worker --backend ... (see vae parity)")
    status = worker(sys.argv[2:])
    # The result is written and the process group is gone: skip the interpreter's teardown, where
    # a C++ worker thread (gloo's, inductor's) still joinable when static objects are destroyed
    # aborts the process now and then ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
