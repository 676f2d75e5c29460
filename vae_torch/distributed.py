"""Several processes in PyTorch: ``torch.distributed`` set up from the ``torchrun`` environment.

One process per device, launched by ``torchrun --nproc-per-node N`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``);
``initialize`` joins the process group with the backend that fits the device (gloo on the CPU,
nccl on CUDA, xccl on Intel XPU), and ``vae_torch.trainer.Trainer(devices=N)`` then trains under
``DistributedDataParallel``.

Mirrors ``vae_jax.distributed`` (``initialize``, ``shutdown``, ``process_count``,
``process_index``, ``all_ranks_ok``, ``all_ranks_agree``).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from vae_common.distributed import (
    DEFAULT_TIMEOUT_S,
    check_timeout,
    parse_coordinator,
    threads_per_process,
    wait_for_coordinator,
)
from vae_common.errors import ConfigError, DeviceError
from vae_torch.device import select_device

# distributed.py names that only this backend has (the mirror test reads it).
TORCH_ONLY = ("backend_for", "local_device")
# The collective backend of each device type.
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "xpu": "xccl"}


def backend_for(device: Any) -> str:
    """The ``torch.distributed`` backend for ``device``: gloo (CPU), nccl (CUDA), xccl (XPU).

    Raises ``DeviceError`` for a device type without one (MPS)."""
    kind = torch.device(device).type
    if kind not in BACKENDS:
        raise DeviceError(
            f"torch.distributed has no backend for {kind} devices; use cpu, cuda or xpu"
        )
    return BACKENDS[kind]


def local_device(device: Any = None) -> torch.device:
    """This process's device: ``select_device(device)``, and for CUDA or XPU without an index
    the one of index ``LOCAL_RANK`` (torchrun starts one process per device of a host)."""
    chosen = select_device(device)
    if chosen.type in ("cuda", "xpu") and chosen.index is None:
        index = _env_int("LOCAL_RANK", 0)
        count = getattr(torch, chosen.type).device_count()
        if index >= count:
            raise DeviceError(
                f"LOCAL_RANK {index} needs {chosen.type}:{index} but this host has {count} "
                f"{chosen.type} device(s); start at most {count} processes per host"
            )
        chosen = torch.device(chosen.type, index)
    return chosen


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: Any = None,
) -> None:
    """Join the process group (``torch.distributed.init_process_group`` over TCP).

    Args:
      coordinator: ``"host:port"`` of rank 0's store; None: ``MASTER_ADDR:MASTER_PORT``.
      num_processes: the world size; None: ``WORLD_SIZE``.
      process_id: this process's rank; None: ``RANK``.
      timeout_s: how long to wait for the coordinator, for every rank to join, and for any
        later collective.
      device: this process's device (``local_device``); it picks the backend (``backend_for``)
        and, for CUDA and XPU, becomes the current device.

    Each process also gets ``max(1, cores // LOCAL_WORLD_SIZE)`` intra-op threads unless
    ``OMP_NUM_THREADS`` is set (torchrun sets it to 1), so the ranks of a host do not
    oversubscribe its cores. Calling it again with the same world size and rank does nothing.

    Raises:
      ConfigError: a setting is missing (not launched by torchrun and not given) or invalid, or
        the process group already exists with a different world size or rank.
      DeviceError: the coordinator did not answer, or not every rank joined, within
        ``timeout_s``; the message names the address and this rank.
    """
    timeout_s = check_timeout(timeout_s)
    if coordinator is None:
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not addr or not port:
            raise ConfigError(
                "no coordinator: pass coordinator='host:port' or launch with torchrun (which "
                "sets MASTER_ADDR and MASTER_PORT)"
            )
        coordinator = f"{addr}:{port}"
    host, port_number = parse_coordinator(coordinator)
    world = num_processes if num_processes is not None else _env_int("WORLD_SIZE")
    rank = process_id if process_id is not None else _env_int("RANK")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ConfigError(f"the world size must be a positive integer, got {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ConfigError(f"the rank must be in [0, {world}), got {rank!r}")
    if dist.is_initialized():
        if (dist.get_world_size(), dist.get_rank()) != (world, rank):
            raise ConfigError(
                f"the process group already exists as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, not rank {rank} of {world}"
            )
        return
    chosen = local_device(device)
    backend = backend_for(chosen)
    if rank != 0:
        wait_for_coordinator(coordinator, timeout_s, rank, world)
    if chosen.type in ("cuda", "xpu"):
        getattr(torch, chosen.type).set_device(chosen)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_per_process(_env_int("LOCAL_WORLD_SIZE", world)))
    url_host = f"[{host}]" if ":" in host else host
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://{url_host}:{port_number}",
            world_size=world,
            rank=rank,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(
            f"rank {rank} of {world} could not join the {backend} process group at "
            f"{host}:{port_number} within {timeout_s:g} s: {exc}"
        ) from exc


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ConfigError(f"{name} is not set: pass it explicitly or launch with torchrun")
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None


def shutdown() -> None:
    """Leave the process group (``destroy_process_group``; nothing when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def process_count() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def process_index() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def _collective_device() -> torch.device:
    # nccl and xccl reduce device tensors only; gloo reduces host tensors.
    backend = str(dist.get_backend())
    for kind, name in BACKENDS.items():
        if backend == name and kind != "cpu":
            return torch.device(kind, getattr(torch, kind).current_device())
    return torch.device("cpu")


def all_ranks_ok(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (for example "this epoch's loss is finite"), so
    every rank stops at the same epoch. Every rank must call it; one all-reduce (MIN)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() == 1)


def all_ranks_agree(text: str) -> bool:
    """True when every rank passes the same ``text`` (e.g. its settings as JSON); ranks started
    with different settings would otherwise train on silently different problems."""
    if not dist.is_initialized():
        return True
    texts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(texts, text)
    return all(t == texts[0] for t in texts)


__all__ = [
    "BACKENDS",
    "all_ranks_agree",
    "all_ranks_ok",
    "backend_for",
    "initialize",
    "local_device",
    "process_count",
    "process_index",
    "shutdown",
]
