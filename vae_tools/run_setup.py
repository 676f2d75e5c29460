"""How a training run begins (``vae_tools.run.train``): its arguments checked
(``check_arguments``), the settings it records (``settings_record``), the run directory opened
and the decision between a fresh run and a resume (``set_up``, with the data), and its starting
point, restored or fresh (``start``).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.data import Dataset
from vae_common.errors import DataError, UsageError
from vae_common.state_checks import check_state
from vae_common.trainer_checks import check_stream
from vae_common.training import TrainConfig
from vae_tools.run_agree import pack_start
from vae_tools.run_commit import Job, restore
from vae_tools.run_data import RunData, binarization, prepare_data, run_data
from vae_tools.run_dir import RunDir, decide, inspect
from vae_tools.run_log import require_tensorboard
from vae_tools.run_manifest import Manifest
from vae_tools.run_ranks import Ranks, check_split
from vae_tools.run_state import RunSettings


def check_arguments(
    epochs: int,
    patience: int,
    settings: RunSettings,
    tensorboard: str | Path | None,
    stream: bool = False,
    prefetch: int | None = None,
) -> None:
    """``UsageError`` for ``train`` arguments that cannot make a run: ``epochs`` < 1,
    ``patience`` < 0 or without a validation split, ``tensorboard`` without ``tensorboardX``;
    ``ConfigError`` for a ``stream`` that is not a bool or a bad ``prefetch`` (negative, not an
    integer, or given without ``stream``: ``vae_common.trainer_checks.check_stream``)."""
    if epochs < 1:
        raise UsageError(f"epochs must be positive, got {epochs}")
    if patience < 0:
        raise UsageError(f"patience must be >= 0, got {patience}")
    if patience and not settings.val_split:
        raise UsageError(
            "early stopping (--patience) watches the validation -ELBO: give --val-split N too"
        )
    if tensorboard is not None:
        require_tensorboard()
    check_stream(stream, prefetch)


def settings_record(
    backend: str,
    config: VAEConfig,
    train_config: TrainConfig,
    settings: RunSettings,
    epochs: int,
    patience: int,
    test_every_epoch: bool,
) -> dict[str, Any]:
    """The run's effective settings as ``run.json`` records them (``train`` adds ``data`` and
    ``flags``)."""
    return {
        "backend": backend,
        "epochs": epochs,
        "patience": patience,
        "test_every_epoch": test_every_epoch,
        "binarize": binarization(train_config, settings),
        "config": config.to_dict(),
        "train": asdict(train_config),
        "run": asdict(settings),
    }


@dataclass(frozen=True)
class Setup:
    """What ``set_up`` found.

    Attributes:
      run_dir: the run directory, open and locked (None in processes other than process 0).
      mode: ``vae_tools.run_dir.decide``'s decision (``"fresh"`` in the other processes).
      dataset: the prepared dataset (uint8 training images when streamed: ``prepare_data``).
      binarize: the run's binarization (``vae_tools.run_data.binarization``).
      data: the run's images (``vae_tools.run_data.run_data``).
    """

    run_dir: RunDir | None
    mode: str
    dataset: Dataset
    binarize: str
    data: RunData


def set_up(
    stack: contextlib.ExitStack[Any],
    out: str | Path,
    resume: bool,
    overwrite: bool,
    settings: RunSettings,
    dataset: Dataset | None,
    config: VAEConfig,
    train_config: TrainConfig,
    ranks: Ranks,
    stream: bool = False,
) -> Setup:
    """Process 0 opens and locks ``out`` (held until ``stack`` closes) and decides between a
    fresh run and a resume; every process prepares the data and checks that its images fit the
    model and that its full batches split over the devices. With ``stream``, the training
    images of a source stored as uint8 stay uint8 (``prepare_data``'s ``keep_uint8``).

    Raises:
      DataError: the images are not of ``config.input_shape`` (``RunDir.open``, ``decide``,
        ``prepare_data`` and ``check_split`` raise their own errors: see ``train``).
    """
    run_dir: RunDir | None = None
    mode = "fresh"
    if ranks.writer:
        run_dir = stack.enter_context(RunDir.open(out, overwrite))
        run_dir.kill_point()
        mode = decide(run_dir.out, inspect(run_dir.out), resume, overwrite)
    ds = prepare_data(settings, dataset, config.likelihood, stream)
    if ds.image_shape != config.input_shape:
        raise DataError(
            f"dataset {ds.name} has images of shape {ds.image_shape} but the model "
            f"expects {config.input_shape}"
        )
    mode_name = binarization(train_config, settings)
    data = run_data(settings, ds, mode_name)
    check_split(settings.batch_size, ranks.devices)
    return Setup(run_dir, mode, ds, mode_name, data)


def start(
    job: Job,
    mode: str,
    record: dict[str, Any],
    init_state: dict[str, np.ndarray] | None,
    ranks: Ranks,
) -> bytes | None:
    """Process 0: restore the run (``mode == "resume"``) or start it afresh (an epoch-0
    manifest); returns where it starts, packed for ``Ranks.broadcast``. Other processes: None."""
    if not ranks.writer:
        return None
    run_dir, config, settings = job.directory(), job.config, job.settings
    restored = restore(job, record) if mode == "resume" else None
    if restored is not None:
        return pack_start(restored.params, restored.optimizer, restored.step, restored.metrics)
    # Whatever a run that never committed an epoch left (an appended metrics line) goes, as
    # with --overwrite.
    run_dir.remove_run_files()
    if init_state is None:
        from vae_common.spec import init_canonical

        init_state = init_canonical(config, settings.seed, settings.dtype)
    check_state(init_state, config)
    run_dir.manifest = Manifest(settings=record)
    run_dir.commit(0, 0)
    return pack_start(init_state, None, 0, [])


__all__ = ["Setup", "check_arguments", "set_up", "settings_record", "start"]
