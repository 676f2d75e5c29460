"""The refusals ``vae train`` makes before any work: whether ``--out`` can be written
(``probe``), what it holds (``inspect``), and whether the run resumes, starts afresh or is
refused (``decide``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vae_common.errors import CheckpointError, ResumeError, RunDirError, UsageError
from vae_tools.run_manifest import (
    LOCK,
    MANIFEST,
    RUN_FILES,
    STATE,
    TEMP_FILE,
    TENSORBOARD_DIR,
    Manifest,
    read_manifest,
)


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


def os_reason(exc: OSError) -> str:
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
        raise RunDirError(f"--out {out} cannot be created: {os_reason(exc)}") from None
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
        raise RunDirError(f"--out {out} is not writable: {os_reason(exc)}") from None


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
