"""The files of a run's epoch, in the commit protocol of ``vae_tools.run_dir``: written after each
epoch (``commit_epoch``), repaired and loaded again on ``--resume`` (``restore``), and the
checkpoint metadata that lets ``vae eval`` evaluate a checkpoint as the run did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import data_metadata, recorded_source, save_checkpoint
from vae_common.config import VAEConfig
from vae_common.data import DataSource
from vae_common.errors import CheckpointError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig
from vae_tools.run_dir import RunDir
from vae_tools.run_manifest import (
    BEST,
    CHECKPOINT,
    MANIFEST,
    METRICS,
    PLOTS,
    STATE,
    Manifest,
    read_manifest,
)
from vae_tools.run_metrics import (
    append_metrics,
    best_epoch,
    metrics_bytes,
    read_metrics,
    truncate_metrics,
)
from vae_tools.run_state import RunSettings, load_train_state, save_train_state


@dataclass(frozen=True)
class Job:
    """What the steps of one ``train`` call share. ``run_dir`` is None in the processes of a
    data-parallel run other than process 0, which never touch the run directory
    (``vae_tools.run_ranks``); ``directory()`` is for the code only process 0 runs."""

    run_dir: RunDir | None
    trainer: TrainerBase
    config: VAEConfig
    train_config: TrainConfig
    settings: RunSettings
    source: DataSource

    def directory(self) -> RunDir:
        """The run directory (process 0's ``Job`` only)."""
        if self.run_dir is None:
            raise AssertionError("only process 0 of a data-parallel run writes the run directory")
        return self.run_dir


@dataclass(frozen=True)
class Restored:
    """The state ``restore`` read back: weights, Adam's moments, the step count and the
    committed metrics rows."""

    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    step: int
    metrics: list[dict[str, Any]]


def checkpoint_meta(
    epoch: int, backend: str, settings: RunSettings, source: DataSource
) -> dict[str, str]:
    """The metadata of a run's checkpoints: the epoch, the backend that trained it, and what
    ``vae eval`` needs to evaluate it as the run did: ``data`` (``source``, its ``binarize``
    the run's), ``seed`` (of the binarization draws and the evaluation noise) and, for older
    readers, ``dataset`` (the spec)."""
    return {
        "epoch": str(epoch),
        "backend": backend,
        "dataset": settings.dataset,
        **data_metadata(source),
        "seed": str(settings.seed),
        "val_split": str(settings.val_split),
    }


def recorded_data(
    meta: dict[str, str], path: str | Path = "checkpoint"
) -> tuple[DataSource | None, int | None]:
    """``(data source, seed)`` a checkpoint's metadata records: its ``data`` entry
    (``vae_common.checkpoint.recorded_source``), else a source of its ``dataset`` spec (binarize
    ``none``; checkpoints of older versions), and its ``seed``; each None when it records none.

    Raises:
      CheckpointError: a ``data`` or ``seed`` entry that is not what ``checkpoint_meta`` writes.
    """
    source = recorded_source(meta, path)
    if source is None and meta.get("dataset"):
        source = DataSource(meta["dataset"])
    seed: int | None = None
    if "seed" in meta:
        text = meta["seed"]
        if not (text.isascii() and text.isdigit()) or int(text) >= 2**63:
            raise CheckpointError(f"{path}: it records seed {text!r}, not a seed")
        seed = int(text)
    return source, seed


def commit_epoch(job: Job, record: dict[str, Any], improved: bool) -> None:
    """Write the files of the epoch ``record`` records, in the protocol's order (the best
    checkpoint when ``improved``), and commit them (``vae_tools.run_dir``)."""
    run_dir, trainer, config, settings = job.directory(), job.trainer, job.config, job.settings
    epoch = record["epoch"]
    run_dir.write(METRICS, lambda p: append_metrics(p, record))
    run_dir.record(METRICS, epoch)
    run_dir.write(
        STATE, lambda p: save_train_state(p, trainer, config, job.train_config, settings, epoch)
    )
    run_dir.record(STATE, epoch)
    meta = checkpoint_meta(epoch, trainer.backend, settings, job.source)
    weights = trainer.state_dict()
    run_dir.write(CHECKPOINT, lambda p: save_checkpoint(p, weights, config, meta))
    run_dir.record(CHECKPOINT, epoch)
    if improved:
        best_meta = {**meta, "val_neg_elbo": repr(float(record["val_neg_elbo"]))}
        run_dir.write(BEST, lambda p: save_checkpoint(p, weights, config, best_meta))
        run_dir.record(BEST, epoch)
    run_dir.commit(epoch, trainer.step)


def restore(job: Job, settings_record: dict[str, Any]) -> Restored | None:
    """Read the run in ``job.run_dir`` back and repair its files; returns its state (for the
    caller to load into the trainer: in a data-parallel run, into every process's), or None
    when no epoch was ever committed (the run starts from the beginning).

    The train state decides the epoch: the manifest's, or one more (a kill came after the train
    state was written and before the manifest). The metrics are truncated to that epoch, the
    checkpoint is rewritten from the train state's weights unless it is the committed one (so
    is the best checkpoint when that epoch is the best), and the repaired state is committed
    before any training. ``run.json`` changes only when something was repaired: the run's new
    settings (``settings_record``: more epochs, another backend) are committed with its next
    epoch, or at its end.
    """
    run_dir, trainer, config, settings = job.directory(), job.trainer, job.config, job.settings
    out = run_dir.out
    manifest = read_manifest(out)
    state_path = run_dir.path(STATE)
    if not state_path.is_file():
        if manifest is None or manifest.epoch == 0:
            return None
        raise CheckpointError(
            f"{state_path} is missing but {out / MANIFEST} records epoch {manifest.epoch}; the "
            "run cannot be resumed (restore the file, or start over with --overwrite)"
        )
    params, opt, epoch, step = load_train_state(state_path, config, job.train_config, settings)
    if manifest is not None and epoch not in (manifest.epoch, manifest.epoch + 1):
        raise CheckpointError(
            f"{state_path} is at epoch {epoch} but {out / MANIFEST} records epoch "
            f"{manifest.epoch}: the files come from different runs (restore them, or start "
            "over with --overwrite)"
        )
    metrics = read_metrics(run_dir.path(METRICS), epoch)

    before = manifest.to_json() if manifest is not None else None
    committed = manifest is not None and manifest.epoch == epoch
    checkpoint_committed = (
        committed and manifest is not None and manifest.vouches_for(out, CHECKPOINT)
    )
    # Plots the manifest vouches for stay listed; the epoch files are recorded afresh below.
    kept_plots = {}
    if manifest is not None:
        kept_plots = {
            name: entry
            for name, entry in manifest.files.items()
            if name in PLOTS and manifest.vouches_for(out, name)
        }
    # The settings and the test results stay those the manifest holds until a commit that
    # changes the run (a run of an older version, without settings, gets them now).
    old_settings = manifest.settings if manifest is not None else None
    kept_test = manifest.test if manifest is not None and committed else None
    run_dir.manifest = Manifest(
        manifest.epoch if manifest else 0,
        manifest.step if manifest else 0,
        kept_plots,
        old_settings if old_settings is not None else settings_record,
    )
    metrics_path = run_dir.path(METRICS)
    if not (metrics_path.is_file() and metrics_path.read_bytes() == metrics_bytes(metrics)):

        def cut(path: Path) -> None:
            truncate_metrics(path, metrics)

        run_dir.write(METRICS, cut)
    run_dir.record(METRICS, epoch)
    run_dir.record(STATE, epoch)
    trained_by = metrics[-1].get("backend", trainer.backend) if metrics else trainer.backend
    meta = checkpoint_meta(epoch, str(trained_by), settings, job.source)
    if not checkpoint_committed:
        run_dir.write(CHECKPOINT, lambda p: save_checkpoint(p, params, config, meta))
    run_dir.record(CHECKPOINT, epoch)
    _restore_best(job, manifest, metrics, epoch, params, meta)
    repaired = Manifest(epoch, step, run_dir.manifest.files, run_dir.manifest.settings, kept_test)
    if repaired.to_json() != before:
        run_dir.commit(epoch, step, test=kept_test)
    else:
        run_dir.manifest.epoch, run_dir.manifest.step = epoch, step
    run_dir.manifest.settings = settings_record
    return Restored(params, opt, step, metrics)


def _restore_best(
    job: Job,
    manifest: Manifest | None,
    metrics: list[dict[str, Any]],
    epoch: int,
    params: dict[str, np.ndarray],
    meta: dict[str, str],
) -> None:
    """Vouch for the best checkpoint of the ``epoch`` epochs in ``metrics``: rewritten from
    the train state's weights when ``epoch`` is the best and the committed file is not its;
    else the committed file of the best epoch (``CheckpointError`` when it is gone)."""
    run_dir = job.directory()
    best = best_epoch(metrics)
    if best is None:
        return
    entry = manifest.files.get(BEST) if manifest is not None else None
    vouched = (
        manifest is not None
        and entry is not None
        and entry["epoch"] == best
        and manifest.vouches_for(run_dir.out, BEST)
    )
    if vouched:
        assert entry is not None
        run_dir.manifest.files[BEST] = entry
        return
    if best != epoch:
        raise CheckpointError(
            f"{run_dir.path(BEST)} is not the best checkpoint (epoch {best}) that "
            f"{run_dir.out / MANIFEST} records; the run cannot resume (restore the file, or "
            "start over with --overwrite)"
        )
    best_meta = {**meta, "val_neg_elbo": repr(float(metrics[-1]["val_neg_elbo"]))}
    run_dir.write(BEST, lambda p: save_checkpoint(p, params, job.config, best_meta))
    run_dir.record(BEST, epoch)
