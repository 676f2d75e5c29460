"""Several devices and several hosts in JAX: the data mesh, and ``jax.distributed``.

Data parallelism is JAX's own sharding: a one-axis ``Mesh`` named ``"data"``, the batch axis of
every batch split along it (``NamedSharding(mesh, P("data"))``), the parameters and the optimizer
state replicated (``NamedSharding(mesh, P())``); XLA's partitioner adds the all-reduces of the loss
and the gradients. ``vae_jax.trainer.Trainer(devices=N)`` builds on ``data_mesh``.

Several hosts join through ``jax.distributed.initialize`` (``initialize`` here), called in every
process before JAX computes anything. Each process then feeds its own rows of every global batch
(``local_rows``) to its own devices.

Mirrors ``vae_torch.distributed`` (``initialize``, ``shutdown``, ``process_count``,
``process_index``, ``all_ranks_ok``, ``all_ranks_agree``).
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae_common.distributed import (
    DEFAULT_TIMEOUT_S,
    check_timeout,
    parse_coordinator,
    wait_for_coordinator,
)
from vae_common.errors import ConfigError, DeviceError
from vae_jax.device import select_device

# distributed.py names that only this backend has (the mirror test reads it).
JAX_ONLY = ("data_mesh", "local_rows")
DATA_AXIS = "data"


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: Any = None,
) -> None:
    """Join this process to a multi-process JAX run (``jax.distributed.initialize``).

    Args:
      coordinator: ``"host:port"`` of process 0's coordinator service; None reads JAX's
        environment (``JAX_COORDINATOR_ADDRESS``, or a Slurm, Open MPI, Kubernetes or Cloud TPU
        job, which also give the other two).
      num_processes, process_id: this run's process count and this process's 0-based index.
      timeout_s: how long to wait for the coordinator and for every process to join.
      device: the platform that trains (``vae_jax.device.select_device`` names); after joining,
        ``DeviceError`` if this process sees no such device.

    Raises:
      DeviceError: JAX has already computed something in this process (it must join first), or
        the coordinator did not answer within ``timeout_s`` (checked before JAX is asked: JAX
        terminates the process when its own connect times out). If the coordinator answers but
        another process never joins, JAX itself ends every waiting process after ``timeout_s``.
      ConfigError: a malformed address or timeout.
    """
    timeout_s = check_timeout(timeout_s)
    if coordinator is not None:
        parse_coordinator(coordinator)
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"process_id must be in [0, {num_processes}), got {process_id}")
    address = coordinator or _env_coordinator()
    if address is not None and process_id not in (None, 0):
        wait_for_coordinator(address, timeout_s, int(process_id), int(num_processes or 0))
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=max(1, math.ceil(timeout_s)),
        )
    except (RuntimeError, ValueError, TypeError) as exc:
        # Among them: called twice, or after JAX initialised its backend in this process.
        raise DeviceError(
            f"jax.distributed.initialize failed: {exc} (call vae_jax.distributed.initialize "
            "once, before anything else uses JAX)"
        ) from exc
    select_device(device)


def _env_coordinator() -> str | None:
    return os.environ.get("JAX_COORDINATOR_ADDRESS") or None


def shutdown() -> None:
    """Leave the multi-process run (``jax.distributed.shutdown``; nothing when not joined)."""
    jax.distributed.shutdown()


def process_count() -> int:
    """Processes in this run (1 without ``initialize``)."""
    return int(jax.process_count())


def process_index() -> int:
    """This process's 0-based index (0 without ``initialize``)."""
    return int(jax.process_index())


def all_ranks_ok(flag: bool) -> bool:
    """True when ``flag`` is true in every process (for example "this epoch's loss is finite"),
    so all processes stop at the same epoch. Every process must call it; one host sync."""
    if process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
    return bool(np.all(np.asarray(flags) == 1))


def all_ranks_agree(text: str) -> bool:
    """True when every process passes the same ``text`` (e.g. its settings as JSON); processes
    started with different settings would otherwise train on silently different problems."""
    if process_count() == 1:
        return True
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int32).copy()
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1, digest.size)
    return bool(np.all(digests == digests[0]))


def data_mesh(n: int, device: Any = None) -> Mesh:
    """A one-axis mesh of ``n`` devices along ``"data"`` (``AxisType.Auto``: shardings are
    propagated by the compiler, so the same jitted functions run on it).

    The devices are those of ``device``'s platform (JAX's default platform when None): in one
    process its first ``n``; with several processes, the first ``n / process_count`` of each
    process, ordered by process, so every process's devices hold one contiguous block of the rows
    of every batch (``local_rows``).

    Raises:
      DeviceError: fewer than ``n`` such devices (or, with several processes, ``n`` not a multiple
        of the process count, or a process with too few), before any work.
      ConfigError: ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"devices must be a positive integer, got {n!r}")
    n = int(n)
    platform = select_device(device).platform
    try:
        available = jax.devices(platform)
    except RuntimeError:
        available = []
    procs = process_count()
    if n > len(available):
        raise DeviceError(
            f"{n} devices were requested but JAX has {len(available)} {platform} device(s) "
            f"({procs} process(es)); on the CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts"
        )
    if n % procs:
        raise DeviceError(
            f"{n} devices do not split over {procs} processes; use a multiple of {procs}"
        )
    per_process = n // procs
    chosen = []
    for p in range(procs):
        own = sorted((d for d in available if d.process_index == p), key=lambda d: d.id)
        if len(own) < per_process:
            raise DeviceError(
                f"process {p} has {len(own)} {platform} device(s), {per_process} are needed "
                f"for {n} devices over {procs} processes"
            )
        chosen.extend(own[:per_process])
    return Mesh(np.array(chosen), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def local_rows(batch: int, mesh: Mesh) -> slice:
    """The rows ``lo:hi`` of a global batch of ``batch`` examples that this process's devices
    hold under ``NamedSharding(mesh, P("data"))`` (all of them in a single process).

    Raises ``ConfigError`` when ``batch`` does not split evenly over the mesh.
    """
    n = mesh.devices.size
    if batch % n:
        raise ConfigError(f"batch size {batch} does not split over {n} devices")
    spans = NamedSharding(mesh, P(DATA_AXIS)).addressable_devices_indices_map((batch,))
    starts = sorted(index[0].indices(batch)[:2] for index in spans.values() if index is not None)
    lo, hi = starts[0][0], starts[-1][1]
    if hi - lo != len(starts) * (batch // n):
        raise DeviceError(f"this process's devices do not hold one block of rows: {starts}")
    return slice(lo, hi)


__all__ = [
    "DATA_AXIS",
    "all_ranks_agree",
    "all_ranks_ok",
    "data_mesh",
    "initialize",
    "local_rows",
    "process_count",
    "process_index",
    "shutdown",
]
