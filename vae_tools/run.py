"""A training run on disk: ``vae train`` and the demo use it with either backend.

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

The evaluation protocol:
- A validation split (``RunSettings.val_split`` examples, chosen by
  ``default_rng([seed, VAL_SPLIT_STREAM]).permutation``) is held out of the training set; both
  keep the dataset's order. It drives the per-epoch metrics (``val_neg_elbo``...), the best
  checkpoint and early stopping (``patience``: stop after that many epochs without a lower
  validation -ELBO; counted from ``metrics.jsonl``, so a resume counts on).
- The test split is evaluated once, at the end (the last and the best checkpoint), and per
  epoch only with ``test_every_epoch``; without a validation split the per-epoch record holds
  the training loss only. Nothing is chosen by looking at the test set.
- Training and evaluation see the same binarization. ``static``: the training and test images
  are binarized once, by one draw of ``default_rng([seed, STATIC_STREAM])`` (training set first).
  ``dynamic``: every training batch is drawn afresh on the device; the test images are
  binarized once by ``default_rng([seed, TEST_BINARIZE_STREAM])`` and the validation images by
  ``default_rng([seed, VAL_BINARIZE_STREAM])`` (``vae_common.data.binarize``), so the held-out
  figures are of binary images, and ``vae eval`` redraws exactly those from the checkpoint's
  recorded binarization and seed (``evaluation_images``).
- Every example is used once per epoch: the ``n % batch_size`` examples the full batches leave
  over (``vae_common.data.last_batch_indices``) are one more, smaller Adam step after the
  epoch's full batches (``train_last_batch``), unless ``RunSettings.drop_last``. That step runs
  through ``Trainer.run_steps`` with its noise (and dynamic binarization) drawn in numpy, so it
  is the same step in both backends.

An epoch is committed only if its losses, its held-out metrics, every weight and every Adam
moment are finite; otherwise ``TrainingError`` names the first bad one and the committed files
stay.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import (
    data_metadata,
    load_checkpoint,
    recorded_source,
    save_checkpoint,
)
from vae_common.config import VAEConfig
from vae_common.data import (
    ARRAYS,
    Dataset,
    DataSource,
    batch_indices,
    binarize,
    last_batch_indices,
    load_dataset,
    validate_images,
)
from vae_common.errors import CheckpointError, ConfigError, DataError, TrainingError, UsageError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig
from vae_tools.run_dir import (
    BEST,
    CHECKPOINT,
    MANIFEST,
    METRICS,
    PLOTS,
    STATE,
    Manifest,
    RunDir,
    check_run_dir,
    decide,
    inspect,
    read_manifest,
)
from vae_tools.run_log import RunLog, require_tensorboard
from vae_tools.run_state import (
    RunSettings,
    append_metrics,
    load_train_state,
    metrics_bytes,
    read_metrics,
    save_train_state,
    truncate_metrics,
)

__all__ = [
    "BACKENDS",
    "BINARIZATIONS",
    "RunData",
    "RunSettings",
    "best_epoch",
    "binarization",
    "check_run_dir",
    "evaluate_checkpoint",
    "evaluation_images",
    "make_trainer",
    "prepare_data",
    "recorded_data",
    "run_data",
    "save_run_plots",
    "test_results",
    "train",
    "train_last_batch",
]

BACKENDS = ("jax", "torch")
BINARIZATIONS = ("none", "static", "dynamic")
# Streams of ``default_rng([seed, stream])`` (see the module docstring).
VAL_SPLIT_STREAM = 6
STATIC_STREAM = 7
TEST_BINARIZE_STREAM = 8
VAL_BINARIZE_STREAM = 9
# The last, smaller batch of epoch e draws from ``default_rng([seed, e, stream])``: its noise,
# and its binarization when dynamic. A third, non-zero entry keeps them apart from the batch
# order's ``default_rng([seed, e])``.
LAST_NOISE_STREAM = 1
LAST_BINARIZE_STREAM = 2
EVAL_BATCH_SIZE = 500


def make_trainer(
    backend: str,
    config: VAEConfig,
    train: TrainConfig,
    dtype: str,
    device: str | None = None,
    compile: bool = False,
    precision: str = "float32",
) -> TrainerBase:
    """The backend's ``Trainer`` (imported only when asked for: ``BackendUnavailableError``
    naming the extra to install when its framework is missing)."""
    from vae_tools._backends import import_backend

    module = import_backend(backend)
    if backend == "jax" and dtype == "float64":
        module.enable_float64()
    trainer: type[TrainerBase] = module.Trainer
    return trainer(config, train, dtype=dtype, device=device, compile=compile, precision=precision)


def binarization(train: TrainConfig, settings: RunSettings) -> str:
    """``"none"``, ``"static"`` or ``"dynamic"``: how the run binarizes its images."""
    if settings.static_binarize:
        return "static"
    return "dynamic" if train.binarize == "dynamic" else "none"


def prepare_data(settings: RunSettings, dataset: Dataset | None, likelihood: str) -> Dataset:
    """Load, validate and (statically) binarize the data of a run: with
    ``settings.static_binarize`` the training and then the test images are binarized by one
    draw of ``default_rng([seed, STATIC_STREAM])``."""
    ds = dataset if dataset is not None else load_dataset(settings.dataset)
    validate_images(ds.train, likelihood, name=f"{ds.name} train images")
    validate_images(ds.test, likelihood, name=f"{ds.name} test images")
    if settings.static_binarize:
        rng = np.random.default_rng([settings.seed, STATIC_STREAM])
        train = binarize(ds.train, rng)
        ds = replace(ds, train=train, test=binarize(ds.test, rng))
    return ds


@dataclass(frozen=True)
class RunData:
    """The images of a run, as its steps and its evaluations see them.

    Attributes:
      name: the dataset's name.
      train: the training images (N, C, H, W): grey levels for dynamic binarization (each
        batch is drawn on the device), binary for static.
      val, val_labels: the validation images (binarized once unless ``none``) and labels, or
        None without a validation split.
      test, test_labels: the test images (binarized once unless ``none``) and labels.
      Labels are None for a dataset without them.
    """

    name: str
    train: np.ndarray
    train_labels: np.ndarray | None
    val: np.ndarray | None
    val_labels: np.ndarray | None
    test: np.ndarray
    test_labels: np.ndarray | None


def evaluation_images(x: np.ndarray, mode: str, seed: int, stream: int) -> np.ndarray:
    """Held-out images as a run evaluates them: ``x`` itself, or for ``mode == "dynamic"`` one
    fixed draw of ``binarize(x, default_rng([seed, stream]))`` (the test set: stream
    ``TEST_BINARIZE_STREAM``; the validation set: ``VAL_BINARIZE_STREAM``). Static images are
    binarized already (``prepare_data``)."""
    if mode == "dynamic":
        return binarize(x, np.random.default_rng([seed, stream]))
    return x


def run_data(settings: RunSettings, ds: Dataset, mode: str) -> RunData:
    """Split the validation set off ``ds`` (prepared by ``prepare_data``) and binarize the
    held-out images by the protocol of ``mode`` (see the module docstring).

    Raises:
      DataError: the validation split leaves fewer training examples than one batch.
    """
    n = len(ds.train)
    val_split = settings.val_split
    if val_split >= n or n - val_split < settings.batch_size:
        raise DataError(
            f"--val-split {val_split} leaves {max(n - val_split, 0)} of the {n} training "
            f"examples of {ds.name}, fewer than one batch of {settings.batch_size}"
        )
    val = val_labels = None
    train, train_labels = ds.train, ds.train_labels
    if val_split:
        order = np.random.default_rng([settings.seed, VAL_SPLIT_STREAM]).permutation(n)
        held = np.zeros(n, bool)
        held[order[:val_split]] = True
        train = ds.train[~held]
        train_labels = None if ds.train_labels is None else ds.train_labels[~held]
        val = evaluation_images(ds.train[held], mode, settings.seed, VAL_BINARIZE_STREAM)
        val_labels = None if ds.train_labels is None else ds.train_labels[held]
    test = evaluation_images(ds.test, mode, settings.seed, TEST_BINARIZE_STREAM)
    return RunData(ds.name, train, train_labels, val, val_labels, test, ds.test_labels)


def train_last_batch(
    trainer: TrainerBase, x: np.ndarray, index: np.ndarray, seed: int, epoch: int, dynamic: bool
) -> float:
    """One Adam step on the last, smaller batch of an epoch; returns its loss.

    Args:
      x: the training images (N, C, H, W) on the host.
      index: the (b,) indices ``vae_common.data.last_batch_indices`` leaves over, b >= 1.
      dynamic: binarize the batch first, by ``binarize(x[index], default_rng([seed, epoch,
        LAST_BINARIZE_STREAM]))``.

    The noise is ``default_rng([seed, epoch, LAST_NOISE_STREAM]).standard_normal((b, L))`` in
    the trainer's dtype, and the step goes through ``Trainer.run_steps`` (the KL weight of the
    trainer's step count, as any step): the same arrays, hence the same step, in both backends.
    """
    xb = np.asarray(x[index])
    if dynamic:
        xb = binarize(xb, np.random.default_rng([seed, epoch, LAST_BINARIZE_STREAM]))
    rng = np.random.default_rng([seed, epoch, LAST_NOISE_STREAM])
    eps = rng.standard_normal((len(index), trainer.config.latent_dim)).astype(trainer.dtype)
    losses = trainer.run_steps(xb[None].astype(trainer.dtype), eps[None])
    return float(losses[0])


def best_epoch(metrics: list[dict[str, Any]]) -> int | None:
    """The epoch of the lowest ``val_neg_elbo`` in ``metrics`` (the first on a tie), or None
    when no record holds one."""
    best: tuple[float, int] | None = None
    for m in metrics:
        value = m.get("val_neg_elbo")
        if value is not None and (best is None or value < best[0]):
            best = (float(value), int(m["epoch"]))
    return None if best is None else best[1]


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
        job = _Job(run_dir, trainer, config, train_config, settings, source)
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
        metrics = _restore(job, record) if mode == "resume" else None
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
            _train_epochs(
                job, data, metrics, epochs, log, eval_batch_size, patience, test_every_epoch
            )
            if plots:
                save_run_plots(run_dir.out, trainer, data, metrics, settings.seed, run_dir)
            step = trainer.step
            # Last: the best checkpoint's test figure loads its weights into the trainer.
            results = _final_test(job, data, metrics, eval_batch_size, patience, epochs)
            for line in _result_lines(results):
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


@dataclass(frozen=True)
class _Job:
    """What the steps of one ``train`` call share."""

    run_dir: RunDir
    trainer: TrainerBase
    config: VAEConfig
    train_config: TrainConfig
    settings: RunSettings
    source: DataSource


def _epochs_since_best(metrics: list[dict[str, Any]]) -> int:
    best = best_epoch(metrics)
    return len(metrics) - best if best is not None else 0


def _train_epochs(
    job: _Job,
    data: RunData,
    metrics: list[dict[str, Any]],
    epochs: int,
    log: RunLog,
    eval_batch_size: int,
    patience: int,
    test_every_epoch: bool,
) -> None:
    """Epochs ``len(metrics) + 1 .. epochs``, each committed (``metrics`` grows in place), or
    fewer when early stopping ends the run."""
    run_dir, trainer, settings = job.run_dir, job.trainer, job.settings
    dynamic = job.train_config.binarize == "dynamic"
    n = len(data.train)
    device_data = trainer.put_data(data.train)
    for epoch in range(len(metrics) + 1, epochs + 1):
        if patience and _epochs_since_best(metrics) >= patience:
            return
        start = time.perf_counter()
        batches = batch_indices(n, settings.batch_size, settings.seed, epoch)
        losses = trainer.train_epoch(device_data, batches, settings.seed, epoch)
        sizes = [settings.batch_size] * len(losses)
        last = np.empty(0, np.int64)
        if not settings.drop_last:
            last = last_batch_indices(n, settings.batch_size, settings.seed, epoch)
        if last.size:
            loss = train_last_batch(trainer, data.train, last, settings.seed, epoch, dynamic)
            losses = np.append(losses, loss)
            sizes.append(len(last))
        train_seconds = time.perf_counter() - start
        kept = _kept(run_dir)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise TrainingError(
                f"loss became {losses[bad[0]]} at epoch {epoch}, step {int(bad[0]) + 1} of "
                f"{len(losses)}; stopped. {kept}. Try a smaller --lr."
            )
        _check_finite_tensors(trainer, epoch, kept)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": trainer.step,
            # The mean over the epoch's examples (the last batch weighs by its size).
            "train_loss": float(np.dot(losses, sizes) / np.sum(sizes)),
            "train_losses": [float(v) for v in losses],
        }
        held_out = [("val", data.val)] if data.val is not None else []
        if test_every_epoch:
            held_out.append(("test", data.test))
        for split, x in held_out:
            assert x is not None
            result = trainer.evaluate(x, seed=settings.seed, batch_size=eval_batch_size)
            for key in ("neg_elbo", "reconstruction", "kl"):
                if not np.isfinite(result[key]):
                    raise TrainingError(
                        f"{split}_{key} became {result[key]} at epoch {epoch} (the training "
                        f"losses were finite); stopped. {kept}. Try a smaller --lr."
                    )
                record[f"{split}_{key}"] = result[key]
        record.update({"seconds": train_seconds, "backend": trainer.backend})
        improved = data.val is not None and best_epoch([*metrics, record]) == epoch
        _commit_epoch(job, record, improved)
        metrics.append(record)
        log.epoch(record)
        if patience and _epochs_since_best(metrics) >= patience and epoch < epochs:
            best = best_epoch(metrics)
            log.note(
                f"early stopping after epoch {epoch}: the validation -ELBO has not improved for "
                f"{patience} epochs (best: epoch {best})"
            )


def _final_test(
    job: _Job,
    data: RunData,
    metrics: list[dict[str, Any]],
    eval_batch_size: int,
    patience: int,
    epochs: int,
) -> dict[str, Any]:
    """The test set evaluated at the end: by the last weights (``last``) and, with a
    validation split, by the best checkpoint's (``best``, loaded into the trainer). Checked
    finite."""
    trainer, settings, run_dir = job.trainer, job.settings, job.run_dir
    results: dict[str, Any] = {
        "epoch": run_dir.manifest.epoch,
        "binarize": binarization(job.train_config, settings),
        "seed": settings.seed,
        "stopped_early": bool(patience)
        and len(metrics) < epochs
        and _epochs_since_best(metrics) >= patience,
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


def _result_lines(results: dict[str, Any]) -> list[str]:
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


def _kept(run_dir: RunDir) -> str:
    """What a failed epoch leaves, for its message."""
    committed = run_dir.manifest.epoch
    if committed:
        return f"The last good checkpoint (epoch {committed}) is kept in {run_dir.out}"
    return "No checkpoint was written"


def _check_finite_tensors(trainer: TrainerBase, epoch: int, kept: str) -> None:
    """``TrainingError`` naming the first weight or Adam moment holding NaN or Inf."""
    for what, tensors in (
        ("weight", trainer.state_dict()),
        ("Adam moment", trainer.optimizer_state_dict()),
    ):
        for name, value in tensors.items():
            arr = np.asarray(value)
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise TrainingError(
                    f"{what} {name!r} holds {bad} non-finite value{'s' if bad > 1 else ''} "
                    f"(NaN or Inf) after epoch {epoch}; stopped. {kept}. Try a smaller --lr."
                )


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


def _commit_epoch(job: _Job, record: dict[str, Any], improved: bool) -> None:
    """Write the files of the epoch ``record`` records, in the protocol's order (the best
    checkpoint when ``improved``), and commit them (``vae_tools.run_dir``)."""
    run_dir, trainer, config, settings = job.run_dir, job.trainer, job.config, job.settings
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


def _restore(job: _Job, settings_record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Load the run in ``job.run_dir`` into ``job.trainer`` and repair its files; returns its
    metrics rows, or None when no epoch was ever committed (the run starts from the beginning).

    The train state decides the epoch: the manifest's, or one more (a kill came after the train
    state was written and before the manifest). The metrics are truncated to that epoch, the
    checkpoint is rewritten from the train state's weights unless it is the committed one (so
    is the best checkpoint when that epoch is the best), and the repaired state is committed
    before any training. ``run.json`` changes only when something was repaired: the run's new
    settings (``settings_record``: more epochs, another backend) are committed with its next
    epoch, or at its end.
    """
    run_dir, trainer, config, settings = job.run_dir, job.trainer, job.config, job.settings
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
    trainer.load_state_dict(params)
    trainer.load_optimizer_state_dict(opt, step)

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
    return metrics


def _restore_best(
    job: _Job,
    manifest: Manifest | None,
    metrics: list[dict[str, Any]],
    epoch: int,
    params: dict[str, np.ndarray],
    meta: dict[str, str],
) -> None:
    """Vouch for the best checkpoint of the ``epoch`` epochs in ``metrics``: rewritten from
    the train state's weights when ``epoch`` is the best and the committed file is not its;
    else the committed file of the best epoch (``CheckpointError`` when it is gone)."""
    run_dir = job.run_dir
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


def _segments(metrics: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Runs of consecutive epochs trained by one backend: ``[(backend, records)]``."""
    segments: list[tuple[str, list[dict[str, Any]]]] = []
    for m in metrics:
        backend = str(m.get("backend", "?"))
        if segments and segments[-1][0] == backend:
            segments[-1][1].append(m)
        else:
            segments.append((backend, [m]))
    return segments


def loss_curve_series(
    metrics: list[dict[str, Any]],
) -> tuple[dict[str, tuple[list[int], list[float]]], dict[str, tuple[list[int], list[float]]], str]:
    """The loss curves of ``metrics``, one series per segment of epochs one backend trained
    (a resumed run may switch): ``(train, held_out, name)`` where ``train`` maps a label to
    (global steps, per-step losses), ``held_out`` to (epoch-end steps, -ELBO), and ``name`` is
    ``"val"`` or ``"test"`` (the split of the per-epoch -ELBO; empty when there is none).

    A label is the backend alone when one backend trained every epoch, else
    ``"BACKEND, epochs A-B"``.
    """
    key = next((k for k in ("val_neg_elbo", "test_neg_elbo") if any(k in m for m in metrics)), "")
    segments = _segments(metrics)
    train: dict[str, tuple[list[int], list[float]]] = {}
    held_out: dict[str, tuple[list[int], list[float]]] = {}
    for backend, records in segments:
        label = backend
        if len(segments) > 1:
            first, last = records[0]["epoch"], records[-1]["epoch"]
            label = f"{backend}, epoch{'s' if last > first else ''} " + (
                f"{first}-{last}" if last > first else f"{first}"
            )
        steps: list[int] = []
        losses: list[float] = []
        for m in records:
            k = len(m["train_losses"])
            steps.extend(range(m["step"] - k + 1, m["step"] + 1))
            losses.extend(m["train_losses"])
        train[label] = (steps, losses)
        if key:
            points = [(m["step"], m[key]) for m in records if key in m]
            held_out[label] = ([p[0] for p in points], [p[1] for p in points])
    return train, held_out, key.split("_")[0]


def save_run_plots(
    out: Path,
    trainer: TrainerBase,
    ds: Dataset | RunData,
    metrics: list[dict[str, Any]],
    seed: int,
    run_dir: RunDir | None = None,
) -> None:
    """The run's PNGs in ``out``: reconstructions of the first 32 test images, 64 prior samples,
    the loss curves (labelled by the backend of each segment of epochs), and the latent means of
    up to 5000 test images when the latent space is 2-D.

    With ``run_dir``, each file is written through it (an I/O error names the file) and recorded
    in its manifest as belonging to the last epoch of ``metrics``.
    """
    from vae_tools import plots

    epoch = metrics[-1]["epoch"] if metrics else 0

    def write(name: str, save: Any) -> None:
        if run_dir is None:
            save(out / name)
        else:
            run_dir.write(name, save)
            run_dir.record(name, epoch)

    x = ds.test[:32]
    recon = trainer.reconstruct(x)
    write("reconstructions.png", lambda p: plots.save_reconstructions(p, x, recon))
    z = np.random.default_rng([seed, 5]).standard_normal((64, trainer.config.latent_dim))
    samples = trainer.sample(z)
    write("samples.png", lambda p: plots.save_samples(p, samples))
    train_curves, held_out, split = loss_curve_series(metrics)
    write(
        "loss_curves.png",
        lambda p: plots.save_loss_curves(p, train_curves, held_out, held_out_name=split or "test"),
    )
    if trainer.config.latent_dim == 2:
        n = min(len(ds.test), 5000)
        means = trainer.encode_mean(ds.test[:n])
        labels = None if ds.test_labels is None else ds.test_labels[:n]
        write("latent_space.png", lambda p: plots.save_latent_space(p, means, labels))


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
