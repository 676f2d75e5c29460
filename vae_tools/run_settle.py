"""How the processes of a data-parallel run stop together (the stopping half of
``vae_tools.run_ranks.Ranks``; nothing here acts when there is one process).

- ``collective``: a collective that fails because another process died (a killed rank) becomes
  ``RankLostError`` naming this process, instead of a framework traceback.
- ``settle``: at the end of each stage (set-up, every epoch, the end), every process reports
  whether it failed (``distributed.all_ranks_ok``), so all stop at the same epoch: a non-finite
  epoch, a failed write or bad input on any process stops every process there. The process that
  failed raises its own error (process 0's, when several did: one message); the others raise
  ``RanksStopped``, which ``vae train`` ends on silently with the same exit status.
  ``settled(ranks, work)`` runs one stage and settles it.
- ``kill_point``: the test hook ``KILL_RANK_ENV``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TypeVar, cast

from vae_common.errors import TrainingError, VAEError

T = TypeVar("T")

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


class Settling:
    """The stopping half of ``Ranks`` (``vae_tools.run_ranks``), which holds the attributes
    declared here."""

    backend: str
    rank: int
    world: int

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

    def kill_point(self, epoch: int) -> None:
        """The test hook ``KILL_RANK_ENV``: SIGKILL this process as ``epoch`` begins."""
        if os.environ.get(KILL_RANK_ENV) == f"{self.rank}:{epoch}":
            os.kill(os.getpid(), signal.SIGKILL)


def settled(ranks: Settling, work: Callable[[], T]) -> T:
    """``work()`` in every process, settled (``Ranks.settle``): its result where every process
    succeeded, else the error (or ``RanksStopped``)."""
    error: VAEError | None = None
    result: T | None = None
    try:
        result = work()
    except VAEError as exc:
        error = exc
    ranks.settle(error)
    return cast(T, result)


def _first_sentence(text: str) -> str:
    """The gist of a framework's error: its first line's first sentence, without a leading
    ``[source/file.cc:123]``."""
    line = (text.strip().splitlines() or [""])[0]
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)
    return line.split(". ")[0].strip()


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "KILL_RANK_ENV",
    "RankLostError",
    "RanksStopped",
    "Settling",
    "settled",
]
