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

import contextlib
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from vae_common.config import VAEConfig
from vae_common.data import Dataset, DataSource
from vae_common.errors import DataError, UsageError, VAEError
from vae_common.state_checks import check_state
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
from vae_tools.run_ranks import (
    Ranks,
    check_split,
    images_digest,
    pack_start,
    ranks_of,
    unpack_start,
)
from vae_tools.run_state import RunSettings

T = TypeVar("T")

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
    devices: int | None = None,
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
        processes return lack the held-out metrics. The batch and the last batch of every
        epoch must split over the devices.

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
      ConfigError: a batch that does not split over ``devices``, or processes started with
        different settings or data.
      run_ranks.RanksStopped: in a process other than the one that failed (several processes).
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
    ranks = ranks_of(backend, devices)
    record: dict[str, Any] = {
        "backend": backend,
        "epochs": epochs,
        "patience": patience,
        "test_every_epoch": test_every_epoch,
        "binarize": binarization(train_config, settings),
        "config": config.to_dict(),
        "train": asdict(train_config),
        "run": asdict(settings),
    }
    ranks.check_agree(
        {**record, "devices": devices, "eval_batch_size": eval_batch_size, "resume": resume}
    )
    with contextlib.ExitStack() as stack:
        error: VAEError | None = None
        run_dir: RunDir | None = None
        mode = "fresh"
        try:
            if ranks.writer:
                run_dir = stack.enter_context(RunDir.open(out, overwrite))
                run_dir.kill_point()
                mode = decide(run_dir.out, inspect(run_dir.out), resume, overwrite)
            ds = prepare_data(settings, dataset, config.likelihood)
            if ds.image_shape != config.input_shape:
                raise DataError(
                    f"dataset {ds.name} has images of shape {ds.image_shape} but the model "
                    f"expects {config.input_shape}"
                )
            mode_name = binarization(train_config, settings)
            data = run_data(settings, ds, mode_name)
            check_split(len(data.train), settings.batch_size, settings.drop_last, ranks.devices)
        except VAEError as exc:
            error = exc
        ranks.settle(error)
        if ranks.world > 1:
            ranks.check_agree({"training images": images_digest(data.train)}, "data")
        trainer = _settled(
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
            ),
        )
        source = replace(ds.source or DataSource(settings.dataset), binarize=mode_name)
        job = Job(run_dir, trainer, config, train_config, settings, source)
        record["data"] = source.to_dict()
        if flags is not None:
            record["flags"] = flags
        start = _settled(ranks, lambda: _start(job, mode, record, init_state, ranks))
        state, optimizer, step, metrics = unpack_start(ranks.broadcast(start))
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
                job, data, metrics, epochs, log, eval_batch_size, patience, test_every_epoch, ranks
            )
            _settled(
                ranks,
                lambda: _finish(
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


def _settled(ranks: Ranks, work: Callable[[], T]) -> T:
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


def _start(
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


def _finish(
    job: Job,
    data: RunData,
    metrics: list[dict[str, Any]],
    log: RunLog,
    plots: bool,
    eval_batch_size: int,
    patience: int,
    epochs: int,
    ranks: Ranks,
    device: str | None,
    compile: bool,
) -> None:
    """Process 0, once the epochs are done: the plots, the test set (last and best
    checkpoint) and the final commit. With several processes they run on a 1-device copy of
    the trainer (evaluation is unsharded; loading the best weights into the data-parallel
    trainer would wait for the other processes)."""
    if not ranks.writer:
        return
    run_dir, trainer = job.directory(), job.trainer
    step = trainer.step
    if ranks.world > 1:
        single = make_trainer(
            trainer.backend,
            job.config,
            job.train_config,
            job.settings.dtype,
            device,
            compile,
            job.settings.precision,
        )
        single.load_state_dict(trainer.state_dict())
        job = replace(job, trainer=single)
    if plots:
        save_run_plots(run_dir.out, job.trainer, data, metrics, job.settings.seed, run_dir)
    # Last: the best checkpoint's test figure loads its weights into the trainer.
    results = final_test(job, data, metrics, eval_batch_size, patience, epochs)
    for line in result_lines(results):
        log.note(line)
    log.scalars(
        {
            f"final/{'best_' if name == 'best' else ''}test_neg_elbo": results[name]["neg_elbo"]
            for name in ("last", "best")
            if name in results
        },
        step,
    )
    run_dir.commit(run_dir.manifest.epoch, step, test=results)
