"""The run directory of ``vae train``: its manifest, its lock, and the checks made before any work.

The commit protocol (``vae_tools.run`` follows it; ``--resume`` relies on it):

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

Refusals before any work: ``--out`` that is a file, lies under a file, or cannot be written (a
directory and a temporary file are created to find out); a run directory locked by another
process; a directory that holds files but no run of ours (without ``overwrite``).

A write that fails with an ``OSError`` (disk full, permission denied, read-only file system)
raises ``RunDirError`` naming the file (exit status 2, like an unwritable ``--out`` found at the
start): the committed files are intact, and ``--resume`` continues from them once there is room.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from vae_common.checkpoint import atomic_write_bytes
from vae_common.errors import CheckpointError, ResumeError, RunDirError, UsageError

MANIFEST = "run.json"
MANIFEST_FORMAT = "vae-twin-run/1"
LOCK = ".vae-train.lock"
STATE = "train_state.safetensors"
CHECKPOINT = "checkpoint.safetensors"
# The canonical checkpoint of the epoch with the lowest validation -ELBO (runs with a
# validation split only), written after the checkpoint in an epoch that improved it.
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
PLOTS = ("reconstructions.png", "samples.png", "loss_curves.png", "latent_space.png")
# The files of every epoch, in the order they are written (then BEST, when the epoch improved).
EPOCH_FILES = (METRICS, STATE, CHECKPOINT)
RUN_FILES = (MANIFEST, *EPOCH_FILES, BEST, *PLOTS)
# The default TensorBoard directory of a run (``vae train --tensorboard``): the event files in it
# are logs, outside the commit protocol (a resume purges the steps it trains again).
TENSORBOARD_DIR = "tb"
# What an interrupted writer leaves: atomic_write_bytes' ".NAME.RANDOM.tmp", the plots'
# "NAME.tmp.png", the writability probe's ".vae-probe.RANDOM".
TEMP_FILE = re.compile(
    r"^(\.(run\.json|train_state\.safetensors|checkpoint\.safetensors|best\.safetensors"
    r"|metrics\.jsonl)\..+\.tmp"
    r"|(reconstructions|samples|loss_curves|latent_space)\.png\.tmp\.png"
    r"|\.vae-probe\..+)$"
)
# Test hook of tests/test_run_kills.py: with this variable set to N, a run kills its own process
# with SIGKILL at its N-th kill point (1: the lock is taken; then one after every file written).
KILL_ENV = "VAE_TWIN_TEST_KILL_AT"


def _is_count(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of the bytes of ``path``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Manifest:
    """The contents of ``run.json``.

    Attributes:
      epoch: the last committed epoch (0 before the first one ends).
      step: Adam steps taken by the end of ``epoch``.
      files: ``{file name: {"epoch": int, "sha256": str}}`` for every file vouched for.
      settings: the run's effective settings (``vae_tools.run``: the model, training and run
        settings, the loop's options, and the command-line flags when ``vae train`` started
        it), or None.
      test: the test-set results of the run's end (``vae_tools.run``), or None until then and
        after an epoch is committed anew.
    """

    epoch: int = 0
    step: int = 0
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] | None = None
    test: dict[str, Any] | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {"format": MANIFEST_FORMAT, "epoch": self.epoch, "step": self.step}
        body["files"] = {k: self.files[k] for k in sorted(self.files)}
        if self.settings is not None:
            body["settings"] = self.settings
        if self.test is not None:
            body["test"] = self.test
        return json.dumps(body, indent=1, allow_nan=False, sort_keys=False) + "\n"

    @classmethod
    def parse(cls, text: str, path: Path) -> Manifest:
        """The manifest in ``text``; ``CheckpointError`` naming ``path`` unless it is one."""
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{path} is not a run manifest (not JSON: {exc})") from None
        if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT:
            raise CheckpointError(f"{path} is not a run manifest ({MANIFEST_FORMAT})")
        epoch, step, files = body.get("epoch"), body.get("step"), body.get("files")
        settings, test = body.get("settings"), body.get("test")
        if (
            _is_count(epoch)
            and _is_count(step)
            and isinstance(files, dict)
            and all(
                isinstance(v, dict)
                and _is_count(v.get("epoch"))
                and isinstance(v.get("sha256"), str)
                for v in files.values()
            )
            and (settings is None or isinstance(settings, dict))
            and (test is None or isinstance(test, dict))
        ):
            return cls(epoch, step, dict(files), settings, test)
        raise CheckpointError(
            f"{path} is a damaged run manifest: it needs integer 'epoch' and 'step', a "
            "'files' map of {'epoch', 'sha256'}, and objects (or nothing) as 'settings' and "
            "'test'"
        )

    def vouches_for(self, directory: Path, name: str) -> bool:
        """Whether ``name`` in ``directory`` is the very file this manifest records."""
        entry = self.files.get(name)
        path = directory / name
        return entry is not None and path.is_file() and sha256_file(path) == entry["sha256"]


@dataclass
class Contents:
    """What a run directory holds, as far as ``vae train`` is concerned.

    Attributes:
      manifest: the parsed ``run.json``, or None.
      has_state: whether ``train_state.safetensors`` exists.
      foreign: the names of entries that are not files of a run (a run's own names count as
        foreign when there is no run: a lone checkpoint is someone else's).
    """

    manifest: Manifest | None
    has_state: bool
    foreign: list[str]

    @property
    def is_run(self) -> bool:
        return self.manifest is not None or self.has_state

    @property
    def committed_nothing(self) -> bool:
        """A run that never finished an epoch: starting over loses nothing."""
        return self.manifest is not None and self.manifest.epoch == 0 and not self.has_state


def describe(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def probe(out: Path) -> None:
    """Create ``out`` if needed and a temporary file in it; ``RunDirError`` saying why not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"--out {out} is a file, not a directory") from None
    except NotADirectoryError:
        raise RunDirError(f"--out {out} cannot be a directory: a parent of it is a file") from None
    except OSError as exc:
        raise RunDirError(f"--out {out} cannot be created: {_os_reason(exc)}") from None
    if not out.is_dir():
        raise RunDirError(f"--out {out} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vae-probe.", dir=out)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise RunDirError(f"--out {out} is not writable: {_os_reason(exc)}") from None


def inspect(out: Path) -> Contents:
    """What ``out`` (an existing directory) holds; see ``Contents``."""
    names = sorted(p.name for p in out.iterdir())
    has_state = (out / STATE).is_file()
    manifest = None
    if (out / MANIFEST).is_file():
        try:
            manifest = read_manifest(out)
        except CheckpointError:
            # Someone else's run.json; with a train state beside it, a damaged one of ours.
            if has_state:
                raise
    is_run = manifest is not None or has_state
    ours = {*RUN_FILES, TENSORBOARD_DIR} if is_run else set()
    foreign = [n for n in names if n != LOCK and not TEMP_FILE.match(n) and n not in ours]
    return Contents(manifest, has_state, foreign)


def read_manifest(out: Path) -> Manifest | None:
    """The manifest in ``out``, or None if there is none."""
    path = out / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None
    return Manifest.parse(text, path)


def decide(out: Path, contents: Contents, resume: bool, overwrite: bool) -> str:
    """``"resume"`` or ``"fresh"``, or the refusal (before any work) as an error.

    Raises:
      RunDirError: ``out`` holds files but no run, and ``overwrite`` is False.
      ResumeError: ``out`` holds a run that committed an epoch, and neither ``resume`` nor
        ``overwrite`` is set.
    """
    if resume and overwrite:
        raise UsageError("give --resume (continue the run) or --overwrite (start over), not both")
    if contents.is_run:
        if resume:
            return "resume"
        if overwrite or contents.committed_nothing:
            return "fresh"
        epoch = contents.manifest.epoch if contents.manifest else "?"
        raise ResumeError(
            f"{out} already holds a training run (epoch {epoch} committed); pass --resume to "
            "continue it, --overwrite to start over, or choose another --out"
        )
    if contents.foreign and not overwrite:
        raise RunDirError(
            f"--out {out} holds files that are not a training run: "
            f"{describe(contents.foreign)}; choose an empty or new directory, or pass "
            "--overwrite to write the run there (files of the run's names are replaced)"
        )
    return "fresh"


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
            raise RunDirError(f"cannot write {path}: {_os_reason(exc)}; {intact}") from None
        self.kill_point()

    def record(self, name: str, epoch: int) -> None:
        """Note in the manifest (not yet committed) that ``name`` now holds ``epoch``."""
        try:
            digest = sha256_file(self.path(name))
        except OSError as exc:
            raise RunDirError(f"cannot read back {self.path(name)}: {_os_reason(exc)}") from None
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
                    f"--overwrite: cannot remove {self.path(name)}: {_os_reason(exc)}"
                ) from None


def _lock(out: Path) -> int:
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot open the lock file {path}: {_os_reason(exc)}") from None
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
        raise RunDirError(f"cannot lock {path}: {_os_reason(exc)}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise RunDirError(f"cannot write the lock file {path}: {_os_reason(exc)}") from None
    return fd


def check_run_dir(out: str | os.PathLike[str], resume: bool, overwrite: bool) -> str:
    """The refusals ``vae train`` makes before loading any data (the run makes them again under
    its lock): ``"resume"`` or ``"fresh"``."""
    with RunDir.open(out, overwrite) as run_dir:
        return decide(run_dir.out, inspect(run_dir.out), resume, overwrite)
