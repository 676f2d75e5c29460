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
- ``vae_tools.run_setup``: the arguments checked, the settings recorded, the run directory
  opened and the choice of a fresh run or a resume, and the starting point (restored or fresh);
- ``vae_tools.run_data``: the images, the validation split and the binarization protocol;
- ``vae_tools.run_epochs``: the trainer and the epoch loop (the last, smaller batch of every
  epoch; an epoch is committed only if everything it computed is finite);
- ``vae_tools.run_commit``: the files of each epoch written, and repaired on ``--resume``;
- ``vae_tools.run_eval``: the evaluation protocol (the validation set per epoch, the test set
  at the end) and ``evaluate_checkpoint``;
- ``vae_tools.run_plots``: the PNGs of the run's end; ``vae_tools.run_finish``: the run's end
  (the plots, the test set, the final commit);
- ``vae_tools.run_ranks`` (with ``run_agree`` and ``run_settle``): the processes of a
  data-parallel run, which one writes, and how they agree and stop together;
- ``vae_tools.run_dir`` (with ``run_manifest`` and ``run_dir_checks``), ``vae_tools.run_state``,
  ``vae_tools.run_metrics`` and ``vae_tools.run_log``: the directory and its commit protocol,
  the train state, the metrics log, and progress and TensorBoard logging.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.data import Dataset, DataSource
from vae_common.training import TrainConfig
from vae_tools.run_commit import Job, checkpoint_meta, recorded_data
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
from vae_tools.run_dir import check_run_dir
from vae_tools.run_epochs import (
    BACKENDS,
    LAST_BINARIZE_STREAM,
    LAST_NOISE_STREAM,
    make_trainer,
    train_epochs,
    train_last_batch,
)
from vae_tools.run_eval import EVAL_BATCH_SIZE, evaluate_checkpoint, test_results
from vae_tools.run_finish import finish
from vae_tools.run_log import RunLog
from vae_tools.run_metrics import best_epoch
from vae_tools.run_plots import loss_curve_series, save_run_plots
from vae_tools.run_ranks import images_digest, ranks_of, unpack_start
from vae_tools.run_settle import settled
from vae_tools.run_setup import check_arguments, set_up, settings_record, start
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
    compile: bool | str = False,
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
    devices: int | None = None,
    stream: bool = False,
    prefetch: int | None = None,
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
      devices: train data-parallel on this many devices (None or 1: one device). JAX: this
        process's devices, or every process's when ``jax.distributed`` joined several; torch:
        every process of a ``torch.distributed`` group of this size calls ``train`` (joined
        before: ``vae_torch.distributed.initialize``). Only process 0 touches ``out`` and
        evaluates the held-out sets (see ``vae_tools.run_ranks``): the rows the other
        processes return lack the held-out metrics. ``settings.batch_size`` must split over
        the devices; the last, smaller batch of every epoch need not (the trainer's
        ``uneven="replicate"``: computed whole on every device).
      stream: keep the training images on the host in their dtype (``Trainer.put_data(x,
        stream=True)``; uint8 for a source stored as uint8 unless ``settings.static_binarize``:
        ``vae_tools.run_data.prepare_data``) and move each batch to the device(s) ahead of its
        step, at most ``prefetch`` (default 2, only with ``stream``) + 1 batches there at
        once; the same steps as the resident images. Not recorded: a run may resume with or
        without it.

    Raises:
      TrainingError: a loss, a held-out metric, a weight or an Adam moment became NaN or Inf
        (the message names it and the epoch; the files of the last good epoch are kept); with
        several processes, ``run_ranks.RankLostError`` when another one died.
      ResumeError: a resume does not fit, or ``out`` already holds a run and neither ``resume``
        nor ``overwrite`` is set.
      RunDirError: ``out`` cannot be used (a file, not writable, locked by another run, holding
        files that are not a run's) or a write failed (naming the file).
      CheckpointError: a file of the run to resume is damaged (naming the file, and the line of
        ``metrics.jsonl``).
      UsageError: ``tensorboard`` without the ``tensorboardX`` package (naming the extra), or
        ``patience`` without a validation split.
      ConfigError: a bad ``stream`` or ``prefetch`` (before any work), a ``batch_size`` that
        does not split over ``devices``, or processes started with different settings or
        data.
      run_ranks.RanksStopped: in a process other than the one that failed (several processes).
    """
    check_arguments(epochs, patience, settings, tensorboard, stream, prefetch)
    ranks = ranks_of(backend, devices)
    record = settings_record(
        backend, config, train_config, settings, epochs, patience, test_every_epoch
    )
    ranks.check_agree(
        {**record, "devices": devices, "eval_batch_size": eval_batch_size, "resume": resume}
    )
    with contextlib.ExitStack() as stack:
        setup = settled(
            ranks,
            lambda: set_up(
                stack,
                out,
                resume,
                overwrite,
                settings,
                dataset,
                config,
                train_config,
                ranks,
                stream,
            ),
        )
        data = setup.data
        if ranks.world > 1:
            ranks.check_agree({"training images": images_digest(data.train)}, "data")
        trainer = settled(
            ranks,
            lambda: make_trainer(
                backend,
                config,
                train_config,
                settings.dtype,
                device,
                compile,
                settings.precision,
                ranks.devices,
                # The last, smaller batch of an epoch, when the devices do not divide it, runs
                # whole on every device: exactly the 1-device step.
                "replicate",
            ),
        )
        source = replace(
            setup.dataset.source or DataSource(settings.dataset), binarize=setup.binarize
        )
        job = Job(setup.run_dir, trainer, config, train_config, settings, source)
        record["data"] = source.to_dict()
        if flags is not None:
            record["flags"] = flags
        begin = settled(ranks, lambda: start(job, setup.mode, record, init_state, ranks))
        state, optimizer, step, metrics = unpack_start(ranks.broadcast(begin))
        with ranks.collective("while loading the starting state"):
            trainer.load_state_dict(state)
            if optimizer is not None:
                trainer.load_optimizer_state_dict(optimizer, step)
        log = RunLog(
            backend,
            epochs,
            len(metrics),
            progress and ranks.writer,
            None if tensorboard is None or not ranks.writer else Path(tensorboard),
            log_every,
            # A fresh run hides everything logged in the directory before; a resume, the steps
            # after its committed one.
            purge_step=trainer.step + 1 if metrics else 0,
        )
        try:
            train_epochs(
                job,
                data,
                metrics,
                epochs,
                log,
                eval_batch_size,
                patience,
                test_every_epoch,
                ranks,
                stream,
                prefetch,
            )
            settled(
                ranks,
                lambda: finish(
                    job,
                    data,
                    metrics,
                    log,
                    plots,
                    eval_batch_size,
                    patience,
                    epochs,
                    ranks,
                    device,
                    compile,
                ),
            )
        finally:
            log.close()
    return metrics
