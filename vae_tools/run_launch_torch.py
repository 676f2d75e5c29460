"""Where a torch ``vae train --devices N`` trains (``vae_tools.run_launch``): as one rank that
``torchrun`` started, or over N ranks this process launches through ``torch.distributed.run``
(``launch_torch``), whose failure it reports in one line naming the rank (``failure_report``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from vae_common.distributed import threads_per_process, usable_cores
from vae_common.errors import DeviceError, UsageError
from vae_tools.options_defaults import option_name
from vae_tools.run_place import CLI_MODULE, JOINED, Placement, check_batch, train_argv


def place_torch(opts: dict[str, Any]) -> Placement:
    """``place`` for the torch backend (see ``vae_tools.run_launch``)."""
    n = opts["devices"]
    for dest in ("coordinator", "num_processes", "process_id"):
        if opts[dest] is not None:
            raise UsageError(
                f"{option_name(dest)} is for the jax backend; torch ranks on several hosts are "
                "started by torchrun (--nnodes, --node-rank, --master-addr, --master-port)"
            )
    world_text = os.environ.get("WORLD_SIZE")
    if world_text is not None:
        if not world_text.isdigit() or int(world_text) < 1:
            raise UsageError(f"WORLD_SIZE must be a positive integer, got {world_text!r}")
        world = int(world_text)
        if n is not None and n != world:
            raise UsageError(
                f"--devices {n}, but this process is one of the {world} that torchrun started "
                f"(WORLD_SIZE {world}): give --devices {world} or leave it out"
            )
        if world == 1:
            return Placement("here")
        from vae_torch import distributed

        distributed.initialize(device=opts["device"])
        JOINED.append("torch")
        return Placement("here", world, distributed.process_index(), "torch")
    if n is None or n == 1:
        return Placement("here")
    check_batch(opts, n)
    _check_torch_devices(n, opts["device"])
    return Placement("launch", n)


def _check_torch_devices(n: int, device: str | None) -> None:
    import torch

    from vae_torch.device import select_device
    from vae_torch.distributed import backend_for

    chosen = select_device(device)
    backend_for(chosen)  # DeviceError for a device type without collectives (MPS)
    if chosen.index is not None:
        raise UsageError(
            f"--device {device} names one device, but the {n} ranks take one {chosen.type} "
            f"device each (index LOCAL_RANK): give --device {chosen.type}, and choose the "
            f"devices with CUDA_VISIBLE_DEVICES (or ZE_AFFINITY_MASK)"
        )
    if chosen.type == "cpu":
        cores = usable_cores()
        if n > cores:
            raise DeviceError(
                f"--devices {n} on the CPU starts {n} processes, but this host has {cores} "
                "usable core(s): each process needs one"
            )
        return
    count = int(getattr(torch, chosen.type).device_count())
    if n > count:
        raise DeviceError(f"--devices {n}, but this host has {count} {chosen.type} device(s)")


def launch_torch(opts: dict[str, Any], n: int) -> int:
    """Start ``n`` ranks of this ``vae train`` on this host through ``torch.distributed.run``
    (``--standalone``; each rank gets ``cores // n`` threads unless ``OMP_NUM_THREADS`` is set)
    and wait for them; returns the exit status.

    When a rank fails, the launcher stops the others. A rank that exited with a status has
    printed why; a rank killed by a signal is named here in one line, with what the run
    directory still holds (``run.json``'s committed epoch, which ``--resume`` continues).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.get_args_parser().parse_args(
        [
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(n),
            "--module",
            CLI_MODULE,
            "train",
            *train_argv(opts),
        ]
    )
    saved = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(n)))
    # The launcher's own log lines (each stopped rank, then a failure report with tracebacks)
    # say less than the one line below.
    logger = logging.getLogger("torch.distributed.elastic")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        torchrun.run(args)
        return 0
    except ChildFailedError as exc:
        status, message = failure_report(exc.failures, n, opts["out"])
        if message:
            print(f"vae train: {message}", file=sys.stderr)
        return status
    except SignalException as exc:
        print(f"vae train: interrupted ({exc.sigval.name})", file=sys.stderr)
        return 130
    finally:
        logger.setLevel(level)
        os.environ.clear()
        os.environ.update(saved)


def failure_report(failures: dict[int, Any], n: int, out: str) -> tuple[int, str]:
    """``(exit status, message)`` for the failed ranks of a launch (``{rank:
    ProcessFailure}``, with ``exitcode`` negative for a signal). The first cause is a rank
    killed by a signal other than the launcher's SIGTERM, else the first rank that exited with
    a status (it printed why: no message then), else a rank the launcher stopped."""

    def kind(failure: Any) -> int:
        if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM:
            return 0
        return 1 if failure.exitcode > 0 else 2

    rank, root = min(failures.items(), key=lambda kv: (kind(kv[1]), kv[1].timestamp, kv[0]))
    if kind(root) == 1:
        return int(root.exitcode), ""
    what = f"{signal.Signals(-root.exitcode).name}" if root.exitcode < 0 else "the launcher"
    message = (
        f"rank {rank} of {n} (pid {root.pid}) was killed by {what}; the launcher stopped the "
        f"other ranks. {_committed(out, n)}"
    )
    return 1, message


def _committed(out: str, n: int) -> str:
    """What the run directory ``out`` still holds, for a failure's message."""
    from vae_common.errors import CheckpointError
    from vae_tools.run_manifest import read_manifest

    try:
        manifest = read_manifest(Path(out))
    except (CheckpointError, OSError):
        manifest = None
    if manifest is None or manifest.epoch == 0:
        return f"No epoch was committed in {out}."
    return (
        f"Epoch {manifest.epoch} is committed in {out} and intact: vae train --out {out} "
        f"--resume --devices {n} continues from it."
    )


__all__ = ["failure_report", "launch_torch", "place_torch"]
