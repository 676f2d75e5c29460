"""The processes of a data-parallel training run: which one writes, and how they stay in step.

A run on N devices is one process (JAX: ``Trainer(devices=N)`` shards over this process's
devices) or several (torch: one rank per device under ``DistributedDataParallel``; JAX: one
process per host joined by ``jax.distributed``). Every process trains; only process 0 (the
*writer*) touches the run directory: it takes the lock, restores or starts the run, writes every
epoch's files, the plots and the test results, and logs progress and TensorBoard. The others
never open it (on several hosts it need not exist there).

How the processes stay in step (``Ranks``; nothing here when there is one process):

- ``check_agree``: before anything else, every process's settings (model, training, run,
  epochs...) and then its training images are compared (``distributed.all_ranks_agree``); a
  difference is refused with one ``ConfigError`` naming the differing settings, printed by
  process 0 alone.
- ``broadcast``: the writer's starting point (fresh weights, or the state ``--resume`` restored,
  with the committed metrics) goes to every process, so all start from the same one.
- ``settle``: at the end of each stage (set-up, every epoch, the end), every process reports
  whether it failed (``distributed.all_ranks_ok``), so all stop at the same epoch: a non-finite
  epoch, a failed write or bad input on any process stops every process there. The process that
  failed raises its own error (process 0's, when several did: one message); the others raise
  ``RanksStopped``, which ``vae train`` ends on silently with the same exit status.
- ``collective``: a collective that fails because another process died (a killed rank) becomes
  ``RankLostError`` naming this process, instead of a framework traceback.

The agreement (``check_agree``, ``broadcast``, ``images_digest``, ``pack_start``) is in
``vae_tools.run_agree``; the stopping (``settle``, ``collective``, ``RanksStopped``,
``RankLostError``, ``settled``) in ``vae_tools.run_settle``. This module holds ``Ranks`` (over
both), ``ranks_of`` and the batch split check (``check_split``), and re-exports the public names
of both.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from vae_common.errors import ConfigError
from vae_tools.run_agree import Agreement, images_digest, pack_start, unpack_start
from vae_tools.run_settle import KILL_RANK_ENV, RankLostError, RanksStopped


@dataclass(frozen=True)
class Ranks(Agreement):
    """The processes of one run, seen from one of them.

    Attributes:
      backend: ``"jax"`` or ``"torch"`` (whose ``distributed`` module joins them).
      devices: the ``Trainer``'s ``devices`` (None: one device, no data parallelism).
      rank: this process's 0-based index; process 0 writes the run directory.
      world: the number of processes (1 for one device, and for JAX's devices of one process).
    """

    backend: str
    devices: int | None = None
    rank: int = 0
    world: int = 1


def ranks_of(backend: str, devices: int | None) -> Ranks:
    """The processes of a run on ``devices`` devices with ``backend``, as this process sees
    them (``vae_<backend>.distributed``: joined already by the caller when there are several).

    JAX: one process (its N local devices), or every process joined by ``jax.distributed``
    (N devices over them all). torch: N processes of a ``torch.distributed`` process group.

    Raises:
      ConfigError: ``devices`` is not a positive integer, or (torch) the process group is not
        of ``devices`` processes.
    """
    if devices is not None and (
        isinstance(devices, bool) or not isinstance(devices, int) or devices < 1
    ):
        raise ConfigError(f"devices must be None or a positive integer, got {devices!r}")
    if devices is None or devices == 1:
        return Ranks(backend)
    from vae_tools._backends import import_backend

    import_backend(backend)
    dist = importlib.import_module(f"vae_{backend}.distributed")
    world, rank = int(dist.process_count()), int(dist.process_index())
    if backend == "torch" and world != devices:
        raise ConfigError(
            f"{devices} devices need a torch.distributed process group of {devices} processes, "
            f"found {'none' if world == 1 else world}: run vae train --devices {devices} (it "
            f"launches them), or torchrun --nproc-per-node {devices} -m vae_tools.cli train"
        )
    return Ranks(backend, devices, rank, world)


def check_split(batch_size: int, devices: int | None) -> None:
    """``ConfigError`` unless the full batches of an epoch (``batch_size``) split evenly over
    ``devices``. The last, smaller batch need not: the run's trainer computes one the devices
    do not divide whole on every device (``uneven="replicate"``, ``vae_tools.run_epochs``)."""
    if devices is None or devices == 1:
        return
    if batch_size % devices:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {devices} devices; use a multiple "
            f"of {devices}"
        )


__all__ = [
    "KILL_RANK_ENV",
    "RankLostError",
    "Ranks",
    "RanksStopped",
    "check_split",
    "images_digest",
    "pack_start",
    "ranks_of",
    "unpack_start",
]
