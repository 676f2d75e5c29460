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
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from vae_common.errors import ConfigError, TrainingError, VAEError

# Test hook of tests/test_train_devices.py: "RANK:EPOCH" makes process RANK kill itself with
# SIGKILL as epoch EPOCH begins (every earlier epoch is committed by then).
KILL_RANK_ENV = "VAE_TWIN_TEST_KILL_RANK"
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class RankLostError(TrainingError):
    """A collective failed in a multi-process run: another process died or stopped answering."""


class RanksStopped(VAEError):
    """This process stops because another process of the run failed (that one reports why).

    ``status`` is the exit status of the run: 2 when some process failed on bad input, else 1.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Ranks:
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

    @property
    def writer(self) -> bool:
        """Whether this process writes the run directory (process 0)."""
        return self.rank == 0

    def _distributed(self) -> ModuleType:
        return importlib.import_module(f"vae_{self.backend}.distributed")

    def _name(self) -> str:
        return f"rank {self.rank} of {self.world}"

    @contextlib.contextmanager
    def collective(self, where: str, kept: str = "") -> Iterator[None]:
        """Inside: a ``RuntimeError`` that is not one of ours (a collective that lost a peer)
        becomes ``RankLostError`` naming this process, ``where`` it happened and ``kept`` (what
        the run directory still holds). Nothing changes with one process."""
        try:
            yield
        except VAEError:
            raise
        except RuntimeError as exc:
            if self.world == 1:
                raise
            first = _first_sentence(str(exc)) or type(exc).__name__
            suffix = f". {kept}" if kept else ""
            raise RankLostError(
                f"{self._name()} lost the other processes {where} ({first}); the run "
                f"stopped{suffix}"
            ) from exc

    def ok(self, flag: bool) -> bool:
        """True when ``flag`` is true in every process (one collective; every process calls)."""
        if self.world == 1:
            return bool(flag)
        with self.collective("while they compared their states"):
            return bool(self._distributed().all_ranks_ok(bool(flag)))

    def agree(self, text: str) -> bool:
        """True when every process passes the same ``text`` (one collective)."""
        if self.world == 1:
            return True
        with self.collective("while they compared their settings"):
            return bool(self._distributed().all_ranks_agree(text))

    def check_agree(self, named: dict[str, Any], what: str = "settings") -> None:
        """Refuse processes started with different ``named`` values (JSON-able, the same keys
        in every process): process 0 raises ``ConfigError`` naming the differing keys, the
        others ``RanksStopped``."""
        if self.world == 1:
            return
        if self.agree(_json(named)):
            return
        differ = [key for key in sorted(named) if not self.agree(_json(named[key]))]
        if not self.writer:
            raise RanksStopped(f"{self._name()}: the processes differ in their {what}", 2)
        raise ConfigError(
            f"the {self.world} processes of this run were started with different {what} "
            f"({', '.join(differ) or 'their order'}); start every process with the same command "
            "line and the same data"
        )

    def settle(self, error: VAEError | None) -> None:
        """The end of a stage: raise ``error`` (this process failed), or ``RanksStopped`` when
        another process did; return when every process succeeded. With several processes the
        error is raised where it is that process's own, or on process 0; a process whose
        failure process 0 shares stops silently (one message for the run)."""
        if self.world == 1:
            if error is not None:
                raise error
            return
        if self.ok(error is None):
            return
        writer_failed = not self.ok(error is None or not self.writer)
        bad_input = not self.ok(error is None or isinstance(error, TrainingError))
        if error is not None and (self.writer or not writer_failed):
            raise error
        raise RanksStopped(
            f"{self._name()}: stopped with the run, which failed on another process (its "
            "message says why)",
            EXIT_BAD_INPUT if bad_input else EXIT_FAILED,
        )

    def broadcast(self, payload: bytes | None) -> bytes:
        """Process 0's ``payload`` in every process (the others pass None)."""
        if self.world == 1:
            if payload is None:
                raise ConfigError("broadcast: process 0 has nothing to send")
            return payload
        with self.collective("while process 0 sent the starting state"):
            if self.backend == "torch":
                import torch.distributed as dist

                box: list[Any] = [payload if self.writer else None]
                dist.broadcast_object_list(box, src=0)
                return bytes(box[0])
            from jax.experimental import multihost_utils

            size = np.int32(len(payload) if payload is not None and self.writer else 0)
            size = int(np.asarray(multihost_utils.broadcast_one_to_all(size)))
            buffer = (
                np.frombuffer(payload, np.uint8)
                if payload is not None and self.writer
                else np.zeros(size, np.uint8)
            )
            return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()

    def kill_point(self, epoch: int) -> None:
        """The test hook ``KILL_RANK_ENV``: SIGKILL this process as ``epoch`` begins."""
        if os.environ.get(KILL_RANK_ENV) == f"{self.rank}:{epoch}":
            os.kill(os.getpid(), signal.SIGKILL)


def _first_sentence(text: str) -> str:
    """The gist of a framework's error: its first line's first sentence, without a leading
    ``[source/file.cc:123]``."""
    line = (text.strip().splitlines() or [""])[0]
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)
    return line.split(". ")[0].strip()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


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


def check_split(n_train: int, batch_size: int, drop_last: bool, devices: int | None) -> None:
    """``ConfigError`` unless every step of an epoch splits evenly over ``devices``: the full
    batches (``batch_size``) and, unless ``drop_last``, the last, smaller batch of the
    ``n_train % batch_size`` examples they leave over (``vae_tools.run_epochs``)."""
    if devices is None or devices == 1:
        return
    if batch_size % devices:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {devices} devices; use a multiple "
            f"of {devices}"
        )
    left = 0 if drop_last else n_train % batch_size
    if left % devices:
        raise ConfigError(
            f"the last batch of every epoch holds the {left} of the {n_train} training examples "
            f"that the full batches of {batch_size} leave over, which do not split over "
            f"{devices} devices: give --drop-last (the 1-device run then drops them too), or a "
            f"--batch-size or --val-split that leaves a multiple of {devices}"
        )


def images_digest(x: np.ndarray) -> str:
    """A SHA-256 of an image array (its shape, dtype and bytes), to check that every process
    trains on the same images."""
    a = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def pack_start(
    state: dict[str, np.ndarray],
    optimizer: dict[str, np.ndarray] | None,
    step: int,
    metrics: list[dict[str, Any]],
) -> bytes:
    """Where a run starts, as bytes for ``Ranks.broadcast``: the weights, Adam's moments and
    step (None: fresh, step 0) and the committed metrics (an ``.npz``, no pickles)."""
    arrays = {f"state/{k}": np.asarray(v) for k, v in state.items()}
    arrays.update({f"adam/{k}": np.asarray(v) for k, v in (optimizer or {}).items()})
    meta = {"step": int(step), "metrics": metrics, "optimizer": optimizer is not None}
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, meta=np.asarray(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def unpack_start(
    data: bytes,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, int, list[dict[str, Any]]]:
    """``pack_start``'s ``(state, optimizer, step, metrics)`` back from its bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        state = {k.removeprefix("state/"): f[k] for k in f.files if k.startswith("state/")}
        adam = {k.removeprefix("adam/"): f[k] for k in f.files if k.startswith("adam/")}
    return state, adam if meta["optimizer"] else None, int(meta["step"]), list(meta["metrics"])


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
