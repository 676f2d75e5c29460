"""Where ``vae train`` runs when it trains on several devices (``--devices N``): ``place`` decides,
before any work, and joins this process to the others when it is one of several.

- **JAX, one host**: the N devices are this process's. On a machine whose JAX platform has fewer
  than N devices of the CPU, N host devices are forced
  (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), which JAX reads only when it starts:
  set here when JAX has not started in this process, else ``vae train`` runs itself again in a
  subprocess with the flag set (``reexec_jax``). More devices than the platform has (GPUs) is
  refused.
- **JAX, several hosts**: ``--coordinator``/``--num-processes``/``--process-id`` (or
  ``JAX_COORDINATOR_ADDRESS``, or ``--coordinator auto`` for JAX's cluster environments: Slurm,
  Open MPI, Kubernetes, Cloud TPU) join every process through ``jax.distributed.initialize``
  (``vae_jax.distributed.initialize``); N defaults to every device of every process.
- **torch**: a process started by ``torchrun`` (``WORLD_SIZE`` set) is one rank: it joins the
  process group (``vae_torch.distributed.initialize``) and ``--devices``, if given, must equal
  the world size. Otherwise ``--devices N`` launches N ranks of this same command on this host
  through ``torch.distributed.run`` (``launch_torch``), after the checks ``vae train`` makes
  before any work (the devices, the batch split, the run directory, the data); when a rank
  fails, the launcher stops the others and names the rank.

Every process runs the same effective options: ``train_argv`` writes them back as a command line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from vae_common.distributed import parse_coordinator, threads_per_process, usable_cores
from vae_common.errors import DeviceError, UsageError
from vae_tools.options_defaults import TRAIN_DEFAULTS, UNSET, option_name

FORCE_FLAG = "--xla_force_host_platform_device_count"
# Set in the subprocess reexec_jax starts (to N): it does not start another one.
FORCED_ENV = "VAE_TWIN_FORCED_HOST_DEVICES"
# The processes torch.distributed.run starts: ``python -m vae_tools.cli train ...``.
CLI_MODULE = "vae_tools.cli"
_JOINED: list[str] = []


@dataclass(frozen=True)
class Placement:
    """Where this ``vae train`` trains.

    Attributes:
      mode: ``"here"`` (this process trains, alone or as one of a group it joined),
        ``"reexec"`` (JAX: run again with forced host devices) or ``"launch"`` (torch: start the
        ranks).
      devices: ``run.train``'s ``devices`` (None: one device).
      rank: this process's index among the processes it joined (0: it writes the run
        directory).
      joined: the backend whose process group ``place`` joined, or None.
    """

    mode: str
    devices: int | None = None
    rank: int = 0
    joined: str | None = None

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def leave(self) -> None:
        """Leave the process group ``place`` joined (nothing otherwise)."""
        if self.joined is not None:
            import importlib

            importlib.import_module(f"vae_{self.joined}.distributed").shutdown()


def place(opts: dict[str, Any]) -> Placement:
    """Decide where the run of the effective options ``opts`` trains (see the module docstring);
    joins this process to its group when it is one of several.

    Raises:
      UsageError: ``--devices`` that differs from torchrun's world size, a batch size that
        ``--devices`` does not divide, or a ``--device`` naming one GPU for several ranks.
      DeviceError: more devices than this host has (naming what it has); a coordinator that did
        not answer.
      ConfigError: a malformed coordinator address.
    """
    if opts["backend"] == "torch":
        return _place_torch(opts)
    return _place_jax(opts)


def _check_batch(opts: dict[str, Any], n: int) -> None:
    if opts["batch_size"] % n:
        raise UsageError(
            f"--batch-size {opts['batch_size']} does not split over {n} devices; use a multiple "
            f"of {n}"
        )


def _place_torch(opts: dict[str, Any]) -> Placement:
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
        _JOINED.append("torch")
        return Placement("here", world, distributed.process_index(), "torch")
    if n is None or n == 1:
        return Placement("here")
    _check_batch(opts, n)
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


def _place_jax(opts: dict[str, Any]) -> Placement:
    n = opts["devices"]
    coordinator = opts["coordinator"]
    several = any(opts[k] is not None for k in ("coordinator", "num_processes", "process_id"))
    if several or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if coordinator not in (None, "auto"):
            parse_coordinator(coordinator)
        from vae_jax import distributed

        distributed.initialize(
            None if coordinator == "auto" else coordinator,
            opts["num_processes"],
            opts["process_id"],
            device=_jax_platform_name(opts["device"]),
        )
        _JOINED.append("jax")
        import jax

        from vae_jax.device import select_device

        platform = select_device(opts["device"]).platform
        n = n if n is not None else len(jax.devices(platform))
        if n > 1:
            _check_batch(opts, n)
        return Placement("here", n if n > 1 else None, distributed.process_index(), "jax")
    if n is None or n == 1:
        return Placement("here")
    _check_batch(opts, n)
    if "jax" not in sys.modules and FORCE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        # JAX has not started here: its CPU platform gets the N devices when it does (no other
        # platform is affected).
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FORCE_FLAG}={n}".strip()
    import jax

    from vae_jax.device import select_device

    platform = select_device(opts["device"]).platform
    have = len(jax.devices(platform))
    if have >= n:
        return Placement("here", n)
    if platform == "cpu" and FORCED_ENV not in os.environ:
        return Placement("reexec", n)
    raise DeviceError(
        f"--devices {n}, but JAX has {have} {platform} device(s) here"
        + (f" (with {FORCE_FLAG}={os.environ[FORCED_ENV]})" if FORCED_ENV in os.environ else "")
    )


def _jax_platform_name(device: str | None) -> str | None:
    return None if device in (None, "", "auto") else device


def train_argv(opts: dict[str, Any]) -> list[str]:
    """The effective options ``opts`` of ``vae train`` as its command line (without the
    ``train``), ``--flag=value`` for each option set: the same effective options again in
    another process (``--config`` is folded in)."""
    argv: list[str] = []
    for dest, value in opts.items():
        if dest == "config" or dest not in TRAIN_DEFAULTS:
            continue
        if value is None or value is False or (dest in UNSET and value == UNSET[dest]):
            continue
        flag = option_name(dest)
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv.append(f"{flag}={','.join(str(v) for v in value)}")
        elif isinstance(value, float):
            argv.append(f"{flag}={value!r}")
        else:
            argv.append(f"{flag}={value}")
    return argv


def reexec_jax(opts: dict[str, Any], n: int) -> int:
    """Run this ``vae train`` again in a subprocess whose JAX has ``n`` forced host CPU devices;
    returns its exit status (its output is this process's)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FORCE_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{FORCE_FLAG}={n}"])
    env["JAX_PLATFORMS"] = "cpu"
    env[FORCED_ENV] = str(n)
    cmd = [sys.executable, "-m", CLI_MODULE, "train", *train_argv(opts)]
    status = subprocess.run(cmd, env=env, check=False).returncode
    if status < 0:
        print(
            f"vae train: the JAX process with {n} CPU devices was killed by "
            f"{signal.Signals(-status).name}",
            file=sys.stderr,
        )
        return 1
    return status


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


def exit_process(status: int) -> NoReturn:
    """End the ``vae`` process with ``status``. A torch rank (it joined a process group) leaves
    with ``os._exit`` once its output is flushed: a gloo or inductor worker thread still
    joinable when the interpreter destroys its static objects aborts the process now and then,
    after its work is done."""
    if "torch" in _JOINED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


__all__ = [
    "CLI_MODULE",
    "FORCED_ENV",
    "FORCE_FLAG",
    "Placement",
    "exit_process",
    "failure_report",
    "launch_torch",
    "place",
    "reexec_jax",
    "train_argv",
]
