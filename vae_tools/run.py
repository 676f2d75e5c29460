"""A training run on disk: ``vae train`` and the demo use it with either backend (``train``).

Files in the run directory (the protocol that keeps them consistent is in ``vae_tools.run_dir``):
- ``run.json``: the manifest, written last after every epoch: the commit point. It names the
  epoch and SHA-256 of each file below, the run's effective settings, and, once the run has
  ended, its test-set results; ``--resume`` repairs whatever lags or leads it.
- ``train_state.safetensors``: weights, Adam's moments and progress (epoch, step) under canonical
  names, with every setting in its metadata; what ``--resume`` reads.
- ``checkpoint.safetensors``: the canonical checkpoint (``vae_common.checkpoint``) of the last
  epoch; its metadata records the data (``data``: the ``vae_common.data.DataSource``, with the
  run's binarization), the seed and the backend, so ``vae eval`` reproduces the run's test
  figure from it alone.
- ``best.safetensors``: with a validation split, the canonical checkpoint of the epoch with the
  lowest validation -ELBO (the first such epoch on a tie).
- ``metrics.jsonl``: one JSON line per finished epoch (strict JSON: no NaN), appended.
- PNGs at the end: reconstructions, prior samples, loss curves, and the latent space if 2-D.
- ``.vae-train.lock``: locked while a run uses the directory; names its pid.

Where each part of a run lives (the public names are re-exported here):
- ``vae_tools.run_data``: the images, the validation split and the binarization protocol;
- ``vae_tools.run_epochs``: the trainer and the epoch loop (the last, smaller batch of every
  epoch; an epoch is committed only if everything it computed is finite);
- ``vae_tools.run_commit``: the files of each epoch written, and repaired on ``--resume``;
- ``vae_tools.run_eval``: the evaluation protocol (the validation set per epoch, the test set
  at the end) and ``evaluate_checkpoint``;
- ``vae_tools.run_plots``: the PNGs of the run's end;
- ``vae_tools.run_dir`` (with ``run_manifest`` and ``run_dir_checks``), ``vae_tools.run_state``,
  ``vae_tools.run_metrics`` and ``vae_tools.run_log``: the directory and its commit protocol,
  the train state, the metrics log, and progress and TensorBoard logging.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.data import Dataset, DataSource
from vae_common.errors import DataError, UsageError
from vae_common.training import TrainConfig
from vae_tools.run_commit import Job, checkpoint_meta, recorded_data, restore
from vae_tools.run_data import (
    BINARIZATIONS,
    STATIC_STREAM,
    TEST_BINARIZE_STREAM,
    VAL_BINARIZE_STREAM,
    VAL_SPLIT_STREAM,
    RunData,
    binarization,
    evaluation_images,
    prepare_data,
    run_data,
)
from vae_tools.run_dir import RunDir, check_run_dir, decide, inspect
from vae_tools.run_epochs import (
    BACKENDS,
    LAST_BINARIZE_STREAM,
    LAST_NOISE_STREAM,
    make_trainer,
    train_epochs,
    train_last_batch,
)
from vae_tools.run_eval import (
    EVAL_BATCH_SIZE,
    evaluate_checkpoint,
    final_test,
    result_lines,
    test_results,
)
from vae_tools.run_log import RunLog, require_tensorboard
from vae_tools.run_manifest import Manifest
from vae_tools.run_metrics import best_epoch
from vae_tools.run_plots import loss_curve_series, save_run_plots
from vae_tools.run_state import RunSettings

__all__ = [
    "BACKENDS",
    "BINARIZATIONS",
    "EVAL_BATCH_SIZE",
    "LAST_BINARIZE_STREAM",
    "LAST_NOISE_STREAM",
    "STATIC_STREAM",
    "TEST_BINARIZE_STREAM",
    "VAL_BINARIZE_STREAM",
    "VAL_SPLIT_STREAM",
    "RunData",
    "RunSettings",
    "best_epoch",
    "binarization",
    "check_run_dir",
    "checkpoint_meta",
    "evaluate_checkpoint",
    "evaluation_images",
    "loss_curve_series",
    "make_trainer",
    "prepare_data",
    "recorded_data",
    "run_data",
    "save_run_plots",
    "test_results",
    "train",
    "train_last_batch",
]


def train(
    out: str | Path,
    backend: str,
    config: VAEConfig,
    train_config: TrainConfig,
    settings: RunSettings,
    epochs: int,
    resume: bool = False,
    device: str | None = None,
    compile: bool = False,
    init_state: dict[str, np.ndarray] | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    plots: bool = True,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    overwrite: bool = False,
    patience: int = 0,
    test_every_epoch: bool = False,
    tensorboard: str | Path | None = None,
    log_every: int = 1,
    flags: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` epochs (in total, counting resumed ones); returns the metrics rows.

    The test results of the end (last and best checkpoint) are in ``run.json``
    (``test_results(out)``).

    Args:
      resume: continue the run in ``out`` (after repairing what a kill left; see
        ``vae_tools.run_dir``); an empty ``out`` starts a new run.
      overwrite: start a new run in ``out`` even though it holds a run or other files (the files
        a run writes are replaced; others are left alone).
      progress: report progress on stderr (a bar on a terminal, else a line per epoch).
      patience: stop after this many epochs without a lower validation -ELBO (0: never; needs
        ``settings.val_split``). Counted from the metrics, so a resumed run counts on.
      test_every_epoch: evaluate the test set after every epoch too (``test_*`` keys).
      tensorboard: write TensorBoard event files into this directory (``vae_tools.run_log``).
      log_every: write every N-th step's training loss to TensorBoard.
      flags: the command line's effective flags, recorded in ``run.json`` (``settings.flags``).

    Raises:
      TrainingError: a loss, a held-out metric, a weight or an Adam moment became NaN or Inf
        (the message names it and the epoch; the files of the last good epoch are kept).
      ResumeError: a resume does not fit, or ``out`` already holds a run and neither ``resume``
        nor ``overwrite`` is set.
      RunDirError: ``out`` cannot be used (a file, not writable, locked by another run, holding
        files that are not a run's) or a write failed (naming the file).
      CheckpointError: a file of the run to resume is damaged (naming the file, and the line of
        ``metrics.jsonl``).
      UsageError: ``tensorboard`` without the ``tensorboardX`` package (naming the extra), or
        ``patience`` without a validation split.
    """
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
    with RunDir.open(out, overwrite) as run_dir:
        run_dir.kill_point()
        mode = decide(run_dir.out, inspect(run_dir.out), resume, overwrite)
        ds = prepare_data(settings, dataset, config.likelihood)
        if ds.image_shape != config.input_shape:
            raise DataError(
                f"dataset {ds.name} has images of shape {ds.image_shape} but the model expects "
                f"{config.input_shape}"
            )
        mode_name = binarization(train_config, settings)
        data = run_data(settings, ds, mode_name)
        trainer = make_trainer(
            backend, config, train_config, settings.dtype, device, compile, settings.precision
        )
        source = replace(ds.source or DataSource(settings.dataset), binarize=mode_name)
        job = Job(run_dir, trainer, config, train_config, settings, source)
        record = {
            "backend": backend,
            "epochs": epochs,
            "patience": patience,
            "test_every_epoch": test_every_epoch,
            "binarize": binarization(train_config, settings),
            "config": config.to_dict(),
            "train": asdict(train_config),
            "run": asdict(settings),
            "data": source.to_dict(),
        }
        if flags is not None:
            record["flags"] = flags
        metrics = restore(job, record) if mode == "resume" else None
        if metrics is None:
            # Whatever a run that never committed an epoch left (an appended metrics line)
            # goes, as with --overwrite.
            run_dir.remove_run_files()
            if init_state is None:
                from vae_common.spec import init_canonical

                init_state = init_canonical(config, settings.seed, settings.dtype)
            trainer.load_state_dict(init_state)
            metrics = []
            run_dir.manifest = Manifest(settings=record)
            run_dir.commit(0, 0)
        log = RunLog(
            backend,
            epochs,
            len(metrics),
            progress,
            None if tensorboard is None else Path(tensorboard),
            log_every,
            # A fresh run hides everything logged in the directory before; a resume, the steps
            # after its committed one.
            purge_step=trainer.step + 1 if metrics else 0,
        )
        try:
            train_epochs(
                job, data, metrics, epochs, log, eval_batch_size, patience, test_every_epoch
            )
            if plots:
                save_run_plots(run_dir.out, trainer, data, metrics, settings.seed, run_dir)
            step = trainer.step
            # Last: the best checkpoint's test figure loads its weights into the trainer.
            results = final_test(job, data, metrics, eval_batch_size, patience, epochs)
            for line in result_lines(results):
                log.note(line)
            log.scalars(
                {
                    f"final/{'best_' if name == 'best' else ''}test_neg_elbo": results[name][
                        "neg_elbo"
                    ]
                    for name in ("last", "best")
                    if name in results
                },
                step,
            )
            run_dir.commit(run_dir.manifest.epoch, step, test=results)
        finally:
            log.close()
    return metrics
