"""Evaluation of a run's held-out sets: the test set at the end of ``train`` (``final_test``, its
results read back by ``test_results``) and any checkpoint, as the run that wrote it evaluated its
test set (``evaluate_checkpoint``, behind ``vae eval``).

- The validation set (``vae_tools.run_data``) drives the per-epoch metrics (``val_neg_elbo``...),
  the best checkpoint and early stopping (``patience``: stop after that many epochs without a
  lower validation -ELBO; counted from ``metrics.jsonl``, so a resume counts on).
- The test split is evaluated once, at the end (the last and the best checkpoint), and per
  epoch only with ``test_every_epoch``; without a validation split the per-epoch record holds
  the training loss only. Nothing is chosen by looking at the test set.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import load_checkpoint
from vae_common.data import ARRAYS, Dataset, DataSource, load_dataset, validate_images
from vae_common.errors import ConfigError, DataError, TrainingError, UsageError
from vae_common.training import TrainConfig
from vae_tools.run_commit import Job, recorded_data
from vae_tools.run_data import (
    BINARIZATIONS,
    TEST_BINARIZE_STREAM,
    RunData,
    binarization,
    evaluation_images,
    prepare_data,
)
from vae_tools.run_epochs import make_trainer
from vae_tools.run_manifest import BEST, CHECKPOINT, read_manifest
from vae_tools.run_metrics import best_epoch, epochs_since_best
from vae_tools.run_state import RunSettings

EVAL_BATCH_SIZE = 500


def final_test(
    job: Job,
    data: RunData,
    metrics: list[dict[str, Any]],
    eval_batch_size: int,
    patience: int,
    epochs: int,
) -> dict[str, Any]:
    """The test set evaluated at the end: by the last weights (``last``) and, with a
    validation split, by the best checkpoint's (``best``, loaded into the trainer). Checked
    finite."""
    trainer, settings, run_dir = job.trainer, job.settings, job.directory()
    results: dict[str, Any] = {
        "epoch": run_dir.manifest.epoch,
        "binarize": binarization(job.train_config, settings),
        "seed": settings.seed,
        "stopped_early": bool(patience)
        and len(metrics) < epochs
        and epochs_since_best(metrics) >= patience,
    }
    which: list[tuple[str, int | None]] = [("last", None)]
    best = best_epoch(metrics)
    if best is not None:
        which.append(("best", best))
    for name, epoch in which:
        if epoch is not None:
            state, _, _ = load_checkpoint(run_dir.path(BEST), expected_config=job.config)
            trainer.load_state_dict(state)
        result = trainer.evaluate(data.test, seed=settings.seed, batch_size=eval_batch_size)
        for key in ("neg_elbo", "reconstruction", "kl"):
            if not np.isfinite(result[key]):
                raise TrainingError(
                    f"the test {key} of the {name} checkpoint is {result[key]}, not a result to "
                    "report: the model overflows on the test set"
                )
        entry = {k: result[k] for k in ("neg_elbo", "reconstruction", "kl", "n")}
        entry["epoch"] = run_dir.manifest.epoch if epoch is None else epoch
        if epoch is not None:
            entry["val_neg_elbo"] = metrics[epoch - 1]["val_neg_elbo"]
        results[name] = entry
    return results


def result_lines(results: dict[str, Any]) -> list[str]:
    """The lines ``train`` reports for ``final_test``'s results: one per checkpoint evaluated."""
    lines = []
    for name, file in (("last", CHECKPOINT), ("best", BEST)):
        r = results.get(name)
        if isinstance(r, dict):
            lines.append(
                f"test -ELBO {r['neg_elbo']:.4f} nats on {r['n']} test images ({file}, epoch "
                f"{r['epoch']})"
            )
    return lines


def test_results(out: str | Path) -> dict[str, Any] | None:
    """The test-set results ``train`` recorded in ``out/run.json`` at the run's end:
    ``{"epoch", "binarize", "seed", "stopped_early", "last": {...}, "best": {...}}`` (``best``
    with a validation split only; each ``{"neg_elbo", "reconstruction", "kl", "n", "epoch"}``),
    or None before the run has ended."""
    manifest = read_manifest(Path(out))
    return None if manifest is None else manifest.test


def evaluate_checkpoint(
    path: str | Path,
    backend: str,
    dataset: str | DataSource | None = None,
    seed: int | None = None,
    iwae_k: int = 0,
    dtype: str | None = None,
    device: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    data: Dataset | None = None,
    binarize: str | None = None,
) -> dict[str, Any]:
    """Test-set -ELBO, its terms and the IWAE estimate for a checkpoint in ``backend``,
    evaluated as the run that wrote it evaluated its test set.

    Args:
      dataset: a dataset spec or source (None: the one the checkpoint records).
      seed: the seed of the evaluation noise (None: the checkpoint's recorded seed, else 0).
      dtype: None: the dtype of the checkpoint's weights.
      data: the dataset itself, instead of loading one.
      binarize: ``none``, ``static`` or ``dynamic`` (None: the checkpoint's recorded
        binarization, else ``none``). The binarization draws are seeded by the checkpoint's
        recorded seed (``seed`` when it records none), so a ``dynamic`` checkpoint of ``vae
        train`` is evaluated on exactly the binary test images the run evaluated.

    Returns:
      ``vae_common.evaluation.evaluate_batches``' keys (``iwae_k`` the number of importance
      samples of ``neg_iwae``) and ``backend``, ``dtype``, ``dataset`` (the spec),
      ``binarize``, ``seed``.

    Raises:
      CheckpointError: the checkpoint cannot be loaded (``vae_common.checkpoint``).
      UsageError: no dataset is given and the checkpoint records none (or records arrays given
        from Python, which cannot be loaded again).
      TrainingError: a result is NaN or Inf (none is returned as a number).
    """
    state, config, meta = load_checkpoint(path)
    source, recorded_seed = recorded_data(meta, path)
    mode = binarize if binarize is not None else (source.binarize if source else "none")
    if mode not in BINARIZATIONS:
        raise ConfigError(f"binarize must be one of {BINARIZATIONS}, got {mode!r}")
    eval_seed = seed if seed is not None else (recorded_seed if recorded_seed is not None else 0)
    draw_seed = recorded_seed if recorded_seed is not None else eval_seed
    if dtype is None:
        dtype = str(next(iter(state.values())).dtype)
    if data is not None:
        ds = data
    elif dataset is not None:
        ds = load_dataset(dataset)
    elif source is None or source.spec == ARRAYS:
        why = "records no dataset" if source is None else "was trained on arrays from Python"
        raise UsageError(f"{path} {why}: give --dataset")
    else:
        ds = load_dataset(replace(source, binarize="none"))
    validate_images(ds.test, config.likelihood, name=f"{ds.name} test images")
    if ds.image_shape != config.input_shape:
        raise DataError(
            f"dataset {ds.name} has images of shape {ds.image_shape} but checkpoint {path} "
            f"expects {config.input_shape}"
        )
    if mode == "static":
        # The run drew the training images first, then the test images, from one stream.
        settings = RunSettings(ds.name, seed=draw_seed, static_binarize=True)
        test = prepare_data(settings, ds, config.likelihood).test
    else:
        test = evaluation_images(ds.test, mode, draw_seed, TEST_BINARIZE_STREAM)
    trainer = make_trainer(backend, config, TrainConfig(), dtype, device)
    trainer.load_state_dict(state)
    result = trainer.evaluate(test, seed=eval_seed, batch_size=batch_size, iwae_k=iwae_k)
    for key in ("neg_elbo", "reconstruction", "kl", "neg_iwae"):
        value = result[key]
        if value is not None and not np.isfinite(value):
            raise TrainingError(
                f"evaluating {path} ({backend}, {dtype}) on {ds.name} gave {key} = {value}, "
                "not a result to report: the model overflows on this data"
            )
    spec = ds.source.spec if ds.source is not None else ds.name
    result.update(
        {"backend": backend, "dtype": dtype, "dataset": spec, "binarize": mode, "seed": eval_seed}
    )
    return result
