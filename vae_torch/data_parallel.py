"""The process group of the torch ``Trainer(devices=N)``: one rank of N processes
(``vae_torch.distributed``) under ``DistributedDataParallel``.

Each rank steps on its rows of the global batch (``rank_rows``), with the noise of those rows
drawn for the whole batch; DDP averages the gradients (the DDP step is ``vae_torch.train``'s) and
``global_mean`` averages the per-step losses once per call.

Mirrors ``vae_jax.data_parallel`` (``require_same``), plus the pieces only a process per device
needs (``process_group``, ``process_device``, ``rank_rows``, ``global_mean``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from vae_common.errors import ConfigError
from vae_common.training import TrainConfig
from vae_torch.device import select_device
from vae_torch.distributed import all_ranks_agree, local_device

# data_parallel.py names that only this backend has (the mirror test reads it).
TORCH_ONLY = ("global_mean", "process_device", "process_group", "rank_rows")


def require_same(text: str, what: str) -> None:
    """``ConfigError`` unless every rank passed the same ``text`` (one collective); ``what``
    says how they differ, e.g. ``"were given different weights"``."""
    if not all_ranks_agree(text):
        raise ConfigError(f"rank {dist.get_rank()}: the ranks {what}")


def process_group(devices: int | None, train: TrainConfig, settings: str) -> tuple[int, int]:
    """``(world size, rank)`` of a trainer with ``devices``: (1, 0) for one device.

    Refuses (``ConfigError``) a process group whose world size is not ``devices``,
    ``train.free_bits > 0`` over several ranks, and ranks whose ``settings`` (the trainer's
    settings text) differ.
    """
    if devices is None:
        return 1, 0
    world = dist.get_world_size() if dist.is_initialized() else None
    if world != devices and not (world is None and devices == 1):
        found = "no process group" if world is None else f"a process group of {world}"
        raise ConfigError(
            f"Trainer(devices={devices}) needs a torch.distributed process group of "
            f"world size {devices}, found {found}; launch with torchrun "
            f"--nproc-per-node {devices} and call vae_torch.distributed.initialize()"
        )
    if world is None or world == 1:
        return 1, 0
    if train.free_bits > 0:
        # The floor applies to the batch mean of each KL dimension: per-rank means floored
        # apart and then averaged are not the global mean floored.
        raise ConfigError(
            "free_bits > 0 is not supported by the torch data-parallel trainer (the floor "
            "needs the global batch mean of each KL dimension); train with free_bits=0, or "
            "with the JAX backend, whose sharded step is exact"
        )
    require_same(settings, "were started with different model, training or dtype settings")
    return world, dist.get_rank()


def process_device(device: Any, world: int) -> torch.device:
    """The device of a trainer over ``world`` ranks: ``select_device(device)`` for one; over
    several, this rank's ``local_device(device)`` (for CUDA or XPU without an index, the one of
    index ``LOCAL_RANK``)."""
    return local_device(device) if world > 1 else select_device(device)


def rank_rows(batch: int, world: int, rank: int) -> slice:
    """The rows ``rank*B/N : (rank+1)*B/N`` of a global batch of B = ``batch`` over N =
    ``world`` ranks."""
    share = batch // world
    return slice(rank * share, (rank + 1) * share)


def global_mean(losses: torch.Tensor, world: int) -> torch.Tensor:
    """Per-step losses (S,) averaged over the ranks in place (equal slices, or the whole batch
    on every rank: the global-batch means); one all-reduce per call, not per step, none for one
    rank."""
    if world > 1:
        dist.all_reduce(losses)
        losses /= world
    return losses


__all__ = ["global_mean", "process_device", "process_group", "rank_rows", "require_same"]
