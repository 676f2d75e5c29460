"""The run directory of ``vae train``: the commit protocol, the lock, and the writes into it.

The names of the files and the manifest are in ``vae_tools.run_manifest``, the checks made before
any work in ``vae_tools.run_dir_checks``; both are re-exported here.

The commit protocol (``vae_tools.run_commit`` follows it; ``--resume`` relies on it):

- ``run.json``, the manifest, is the commit point. It names the epoch (and the SHA-256) of every
  file it vouches for, and it is written last, atomically, after the files of an epoch:
  ``metrics.jsonl``, then ``train_state.safetensors``, then ``checkpoint.safetensors``, then
  ``best.safetensors`` (only in an epoch that improved the validation -ELBO), then ``run.json``.
  A fresh run writes a manifest at epoch 0 before its first epoch, so a directory holding a
  manifest is always a run of ours. The manifest also holds the run's effective settings
  (``settings``) and, once the run has ended, its test-set results (``test``).
- ``metrics.jsonl`` grows by one appended line per epoch (flushed and fsynced); every other file
  is replaced atomically (``vae_common.checkpoint.atomic_write_bytes``, plots through a
  temporary file and one rename), so a kill leaves each of those whole, old or new, and the
  metrics with at most one line (possibly partial) past the committed ones. Between two
  manifests the epoch files can only *lead* the manifest by one epoch, in write order: metrics
  ahead of the train state ahead of the checkpoint ahead of the best checkpoint. The train state
  is the truth: a resume starts from its epoch (the manifest's, or one more when the kill came
  after the train state was written), truncates the metrics to that epoch, rewrites the
  checkpoint (and the best checkpoint, when that epoch was the best) from the train state's
  weights unless it is the committed one, and commits a new manifest before training on.
- ``.vae-train.lock`` is ``flock``-ed for the run's lifetime and holds the holder's pid; the OS
  releases the lock when the process dies, however it dies. The file itself stays.

Refusals before any work (``vae_tools.run_dir_checks``): ``--out`` that is a file, lies under a
file, or cannot be written (a directory and a temporary file are created to find out); a run
directory locked by another process; a directory that holds files but no run of ours (without
``overwrite``).

A write that fails with an ``OSError`` (disk full, permission denied, read-only file system)
raises ``RunDirError`` naming the file (exit status 2, like an unwritable ``--out`` found at the
start): the committed files are intact, and ``--resume`` continues from them once there is room.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vae_common.checkpoint import atomic_write_bytes
from vae_common.errors import RunDirError
from vae_tools.run_dir_checks import Contents, decide, describe, inspect, os_reason, probe
from vae_tools.run_manifest import (
    BEST,
    CHECKPOINT,
    EPOCH_FILES,
    LOCK,
    MANIFEST,
    MANIFEST_FORMAT,
    METRICS,
    PLOTS,
    RUN_FILES,
    STATE,
    TEMP_FILE,
    TENSORBOARD_DIR,
    Manifest,
    read_manifest,
    sha256_file,
)

__all__ = [
    "BEST",
    "CHECKPOINT",
    "EPOCH_FILES",
    "KILL_ENV",
    "LOCK",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "METRICS",
    "PLOTS",
    "RUN_FILES",
    "STATE",
    "TEMP_FILE",
    "TENSORBOARD_DIR",
    "Contents",
    "Manifest",
    "RunDir",
    "check_run_dir",
    "decide",
    "describe",
    "inspect",
    "probe",
    "read_manifest",
    "sha256_file",
]

# Test hook of tests/test_run_kills.py: with this variable set to N, a run kills its own process
# with SIGKILL at its N-th kill point (1: the lock is taken; then one after every file written).
KILL_ENV = "VAE_TWIN_TEST_KILL_AT"


class RunDir:
    """A locked run directory: its paths, its manifest, and the writes that go into it.

    Use ``RunDir.open(out)``; the lock is held until the ``with`` block ends, however it ends.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        # The manifest as this process last committed it (or found it, on resume).
        self.manifest = Manifest()
        self._kill_points = 0

    @classmethod
    @contextmanager
    def open(cls, out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[RunDir]:
        """Probe ``out``, take its lock (``RunDirError`` naming the holder's pid if another
        process has it) and yield the ``RunDir``.

        A directory that never held a run and holds files (see ``decide``) is refused before
        the lock file is created, unless ``overwrite``: nothing is written into it.
        """
        path = Path(out)
        probe(path)
        if not overwrite and not (path / LOCK).exists():
            contents = inspect(path)
            if not contents.is_run and contents.foreign:
                decide(path, contents, resume=False, overwrite=False)
        fd = _lock(path)
        try:
            yield cls(path)
        finally:
            # Clear the pid first: a lock file that names a pid claims a live holder.
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)

    def path(self, name: str) -> Path:
        return self.out / name

    def kill_point(self) -> None:
        """The test hook (``KILL_ENV``): SIGKILL this process at the N-th call."""
        self._kill_points += 1
        if os.environ.get(KILL_ENV) == str(self._kill_points):
            os.kill(os.getpid(), signal.SIGKILL)

    def write(self, name: str, writer: Callable[[Path], None]) -> None:
        """Run ``writer(path)`` for the file ``name``; an ``OSError`` becomes ``RunDirError``
        naming the file and what is still intact."""
        path = self.path(name)
        try:
            writer(path)
        except OSError as exc:
            committed = self.manifest.epoch
            intact = (
                f"the files of epoch {committed} are intact and --resume continues from them"
                if committed
                else "no epoch had been committed yet"
            )
            raise RunDirError(f"cannot write {path}: {os_reason(exc)}; {intact}") from None
        self.kill_point()

    def record(self, name: str, epoch: int) -> None:
        """Note in the manifest (not yet committed) that ``name`` now holds ``epoch``."""
        try:
            digest = sha256_file(self.path(name))
        except OSError as exc:
            raise RunDirError(f"cannot read back {self.path(name)}: {os_reason(exc)}") from None
        self.manifest.files[name] = {"epoch": epoch, "sha256": digest}

    def commit(self, epoch: int, step: int, test: dict[str, Any] | None = None) -> None:
        """Write the manifest: ``epoch`` and every recorded file are now the run's state, with
        the settings of ``self.manifest`` and the test results ``test`` (None: none yet)."""
        manifest = Manifest(epoch, step, self.manifest.files, self.manifest.settings, test)
        text = manifest.to_json().encode()
        self.write(MANIFEST, lambda p: atomic_write_bytes(p, text))
        self.manifest.epoch, self.manifest.step, self.manifest.test = epoch, step, test

    def remove_run_files(self) -> None:
        """Delete the files a run writes (``--overwrite``). The train state goes first: a kill
        part-way then leaves a manifest without its train state, which ``--resume`` refuses,
        never an old train state that it would continue."""
        for name in (STATE, MANIFEST, CHECKPOINT, BEST, METRICS, *PLOTS):
            try:
                self.path(name).unlink(missing_ok=True)
            except OSError as exc:
                raise RunDirError(
                    f"--overwrite: cannot remove {self.path(name)}: {os_reason(exc)}"
                ) from None


def _lock(out: Path) -> int:
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot open the lock file {path}: {os_reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        except OSError:
            holder = "unknown"
        os.close(fd)
        raise RunDirError(
            f"{out} is in use by another vae train (pid {holder}); wait for it to finish or "
            "choose another --out"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise RunDirError(f"cannot lock {path}: {os_reason(exc)}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise RunDirError(f"cannot write the lock file {path}: {os_reason(exc)}") from None
    return fd


def check_run_dir(out: str | os.PathLike[str], resume: bool, overwrite: bool) -> str:
    """The refusals ``vae train`` makes before loading any data (the run makes them again under
    its lock): ``"resume"`` or ``"fresh"``."""
    with RunDir.open(out, overwrite) as run_dir:
        return decide(run_dir.out, inspect(run_dir.out), resume, overwrite)
