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
  ``max(1, cores // N)`` (``vae_tools.parity_dp_launch.rank_threads``); rank 0 reports. On the CPU
  every rank needs a core of its own.

A subprocess cannot take turns with the rows of this one, so its rows are not interleaved with
them (``interleaved: false`` in the record; its own modes are interleaved among themselves). The
subprocess entry point is ``python -m vae_tools.bench.dp_worker JOB_DIR``; its job, launch and
run are in ``vae_tools.bench.dp_job`` (their names are importable from here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vae_common.distributed import usable_cores
from vae_common.errors import ConfigError, DeviceError
from vae_tools.bench.contenders import DP_MODES
from vae_tools.bench.dp_job import (
    DATA_FILE,
    JOB_FILE,
    RANK_TIMEOUT_S,
    RESULT_FILE,
    RUN_TIMEOUT_S,
    Job,
    launch,
    load_job,
    run_elsewhere,
    save_job,
)


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


__all__ = [
    "DATA_FILE",
    "DP_MODES",
    "JOB_FILE",
    "RANK_TIMEOUT_S",
    "RESULT_FILE",
    "RUN_TIMEOUT_S",
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
