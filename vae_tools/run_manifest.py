"""The names of a run directory's files and its manifest, ``run.json``: the commit point of the
protocol ``vae_tools.run_dir`` describes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from vae_common.errors import CheckpointError

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
