"""A training run on disk: ``vae train`` and the demo use it with either backend.

Files in the run directory (the protocol that keeps them consistent is in ``vae_tools.run_dir``):
- ``run.json``: the manifest, written last after every epoch: the commit point. It names the
  epoch and SHA-256 of each file below; ``--resume`` repairs whatever lags or leads it.
- ``train_state.safetensors``: weights, Adam's moments and progress (epoch, step) under canonical
  names, with every setting in its metadata; what ``--resume`` reads.
- ``checkpoint.safetensors``: the canonical checkpoint (``vae_common.checkpoint``).
- ``metrics.jsonl``: one JSON line per finished epoch (strict JSON: no NaN).
- PNGs at the end: reconstructions, prior samples, loss curves, and the latent space if 2-D.
- ``.vae-train.lock``: locked while a run uses the directory; names its pid.

Every file is replaced atomically, so a kill at any moment loses at most the epoch in progress.
An epoch is committed only if its losses, its test metrics, every weight and every Adam moment
are finite; otherwise ``TrainingError`` names the first bad one and the committed files stay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import save_checkpoint
from vae_common.config import VAEConfig
from vae_common.data import Dataset, batch_indices, binarize, load_dataset, validate_images
from vae_common.errors import CheckpointError, DataError, TrainingError, UsageError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig
from vae_tools.run_dir import (
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
from vae_tools.run_state import (
    RunSettings,
    load_train_state,
    metrics_bytes,
    read_metrics,
    save_train_state,
    write_metrics,
)

__all__ = [
    "BACKENDS",
    "RunSettings",
    "check_run_dir",
    "evaluate_checkpoint",
    "make_trainer",
    "prepare_data",
    "save_run_plots",
    "train",
]

BACKENDS = ("jax", "torch")


def make_trainer(
    backend: str,
    config: VAEConfig,
    train: TrainConfig,
    dtype: str,
    device: str | None = None,
    compile: bool = False,
) -> TrainerBase:
    """The backend's ``Trainer`` (imported only when asked for: ``BackendUnavailableError``
    naming the extra to install when its framework is missing)."""
    from vae_tools._backends import import_backend

    module = import_backend(backend)
    if backend == "jax" and dtype == "float64":
        module.enable_float64()
    trainer: type[TrainerBase] = module.Trainer
    return trainer(config, train, dtype=dtype, device=device, compile=compile)


def prepare_data(settings: RunSettings, dataset: Dataset | None, likelihood: str) -> Dataset:
    """Load, validate and (statically) binarize the data of a run."""
    ds = dataset if dataset is not None else load_dataset(settings.dataset)
    validate_images(ds.train, likelihood, name=f"{ds.name} train images")
    validate_images(ds.test, likelihood, name=f"{ds.name} test images")
    if settings.static_binarize:
        rng = np.random.default_rng([settings.seed, 7])
        ds = Dataset(
            ds.name,
            binarize(ds.train, rng),
            binarize(ds.test, rng),
            ds.train_labels,
            ds.test_labels,
        )
    return ds


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
    eval_batch_size: int = 500,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` epochs (in total, counting resumed ones); returns the metrics rows.

    Args:
      resume: continue the run in ``out`` (after repairing what a kill left; see
        ``vae_tools.run_dir``); an empty ``out`` starts a new run.
      overwrite: start a new run in ``out`` even though it holds a run or other files (the files
        a run writes are replaced; others are left alone).

    Raises:
      TrainingError: a loss, a test metric, a weight or an Adam moment became NaN or Inf (the
        message names it and the epoch; the files of the last good epoch are kept).
      ResumeError: a resume does not fit, or ``out`` already holds a run and neither ``resume``
        nor ``overwrite`` is set.
      RunDirError: ``out`` cannot be used (a file, not writable, locked by another run, holding
        files that are not a run's) or a write failed (naming the file).
      CheckpointError: a file of the run to resume is damaged (naming the file, and the line of
        ``metrics.jsonl``).
    """
    if epochs < 1:
        raise UsageError(f"epochs must be positive, got {epochs}")
    with RunDir.open(out, overwrite) as run_dir:
        run_dir.kill_point()
        mode = decide(run_dir.out, inspect(run_dir.out), resume, overwrite)
        ds = prepare_data(settings, dataset, config.likelihood)
        if ds.image_shape != config.input_shape:
            raise DataError(
                f"dataset {ds.name} has images of shape {ds.image_shape} but the model expects "
                f"{config.input_shape}"
            )
        trainer = make_trainer(backend, config, train_config, settings.dtype, device, compile)
        job = _Job(run_dir, trainer, config, train_config, settings)
        metrics = _restore(job) if mode == "resume" else None
        if metrics is None:
            if overwrite:
                run_dir.remove_run_files()
            if init_state is None:
                from vae_common.spec import init_canonical

                init_state = init_canonical(config, settings.seed, settings.dtype)
            trainer.load_state_dict(init_state)
            metrics = []
            run_dir.manifest = Manifest()
            run_dir.commit(0, 0)
        _train_epochs(job, ds, metrics, epochs, progress, eval_batch_size)
        if plots:
            save_run_plots(run_dir.out, trainer, ds, metrics, settings.seed, run_dir=run_dir)
            run_dir.commit(run_dir.manifest.epoch, trainer.step)
    return metrics


@dataclass(frozen=True)
class _Job:
    """What the steps of one ``train`` call share."""

    run_dir: RunDir
    trainer: TrainerBase
    config: VAEConfig
    train_config: TrainConfig
    settings: RunSettings


def _train_epochs(
    job: _Job,
    ds: Dataset,
    metrics: list[dict[str, Any]],
    epochs: int,
    progress: bool,
    eval_batch_size: int,
) -> None:
    """Epochs ``len(metrics) + 1 .. epochs``, each committed (``metrics`` grows in place)."""
    run_dir, trainer, settings, backend = (
        job.run_dir,
        job.trainer,
        job.settings,
        job.trainer.backend,
    )
    first_epoch = len(metrics) + 1
    data = trainer.put_data(ds.train)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, initial=first_epoch - 1, desc=f"{backend} training", unit="epoch")
    try:
        for epoch in range(first_epoch, epochs + 1):
            start = time.perf_counter()
            batches = batch_indices(len(ds.train), settings.batch_size, settings.seed, epoch)
            losses = trainer.train_epoch(data, batches, settings.seed, epoch)
            train_seconds = time.perf_counter() - start
            kept = _kept(run_dir)
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise TrainingError(
                    f"loss became {losses[bad[0]]} at epoch {epoch}, step {int(bad[0]) + 1} of "
                    f"{len(losses)}; stopped. {kept}. Try a smaller --lr."
                )
            _check_finite_tensors(trainer, epoch, kept)
            test = trainer.evaluate(ds.test, seed=settings.seed, batch_size=eval_batch_size)
            for key in ("neg_elbo", "reconstruction", "kl"):
                if not np.isfinite(test[key]):
                    raise TrainingError(
                        f"test_{key} became {test[key]} at epoch {epoch} (the training losses "
                        f"were finite); stopped. {kept}. Try a smaller --lr."
                    )
            record = {
                "epoch": epoch,
                "step": trainer.step,
                "train_loss": float(np.mean(losses)),
                "train_losses": [float(v) for v in losses],
                "test_neg_elbo": test["neg_elbo"],
                "test_reconstruction": test["reconstruction"],
                "test_kl": test["kl"],
                "seconds": train_seconds,
                "backend": backend,
            }
            _commit_epoch(job, [*metrics, record])
            metrics.append(record)
            if bar:
                bar.set_postfix(loss=f"{record['train_loss']:.2f}", test=f"{test['neg_elbo']:.2f}")
                bar.update(1)
    finally:
        if bar:
            bar.close()


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


def _commit_epoch(job: _Job, metrics: list[dict[str, Any]]) -> None:
    """Write the files of the epoch that ``metrics[-1]`` records, in the protocol's order, and
    commit them (``vae_tools.run_dir``)."""
    run_dir, trainer, config, settings = job.run_dir, job.trainer, job.config, job.settings
    epoch = metrics[-1]["epoch"]
    run_dir.write(METRICS, lambda p: write_metrics(p, metrics))
    run_dir.record(METRICS, epoch)
    run_dir.write(
        STATE, lambda p: save_train_state(p, trainer, config, job.train_config, settings, epoch)
    )
    run_dir.record(STATE, epoch)
    meta = {"epoch": str(epoch), "backend": trainer.backend, "dataset": settings.dataset}
    run_dir.write(CHECKPOINT, lambda p: save_checkpoint(p, trainer.state_dict(), config, meta))
    run_dir.record(CHECKPOINT, epoch)
    run_dir.commit(epoch, trainer.step)


def _restore(job: _Job) -> list[dict[str, Any]] | None:
    """Load the run in ``job.run_dir`` into ``job.trainer`` and repair its files; returns its
    metrics rows, or None when no epoch was ever committed (the run starts from the beginning).

    The train state decides the epoch: the manifest's, or one more (a kill came after the train
    state was written and before the manifest). The metrics are truncated to that epoch, the
    checkpoint is rewritten from the train state's weights unless it is the committed one, and
    the repaired state is committed before any training.
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
    run_dir.manifest = Manifest(
        manifest.epoch if manifest else 0, manifest.step if manifest else 0, kept_plots
    )
    metrics_path = run_dir.path(METRICS)
    text = metrics_bytes(metrics)
    if not (metrics_path.is_file() and metrics_path.read_bytes() == text):
        run_dir.write(METRICS, lambda p: write_metrics(p, metrics))
    run_dir.record(METRICS, epoch)
    run_dir.record(STATE, epoch)
    if not checkpoint_committed:
        trained_by = metrics[-1].get("backend", trainer.backend) if metrics else trainer.backend
        meta = {"epoch": str(epoch), "backend": str(trained_by), "dataset": settings.dataset}
        run_dir.write(CHECKPOINT, lambda p: save_checkpoint(p, params, config, meta))
    run_dir.record(CHECKPOINT, epoch)
    if Manifest(epoch, step, run_dir.manifest.files).to_json() != before:
        run_dir.commit(epoch, step)
    else:
        run_dir.manifest.epoch, run_dir.manifest.step = epoch, step
    return metrics


def save_run_plots(
    out: Path,
    trainer: TrainerBase,
    ds: Dataset,
    metrics: list[dict[str, Any]],
    seed: int,
    run_dir: RunDir | None = None,
) -> None:
    """The run's PNGs in ``out``: reconstructions of the first 32 test images, 64 prior samples,
    the loss curves, and the latent means of up to 5000 test images when the latent space is 2-D.

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
    curve = [v for m in metrics for v in m["train_losses"]]
    test_curve = ([m["step"] for m in metrics], [m["test_neg_elbo"] for m in metrics])
    write(
        "loss_curves.png",
        lambda p: plots.save_loss_curves(
            p, {trainer.backend: curve}, {trainer.backend: test_curve}
        ),
    )
    if trainer.config.latent_dim == 2:
        n = min(len(ds.test), 5000)
        means = trainer.encode_mean(ds.test[:n])
        labels = ds.test_labels[:n]
        write("latent_space.png", lambda p: plots.save_latent_space(p, means, labels))


def evaluate_checkpoint(
    path: str | Path,
    backend: str,
    dataset: str,
    seed: int = 0,
    iwae_k: int = 0,
    dtype: str = "float32",
    device: str | None = None,
    batch_size: int = 500,
    data: Dataset | None = None,
) -> dict[str, Any]:
    """Test-set -ELBO, its terms and the IWAE estimate for a checkpoint in ``backend``.

    Raises:
      CheckpointError: the checkpoint cannot be loaded (``vae_common.checkpoint``).
      TrainingError: a result is NaN or Inf (none is returned as a number).
    """
    from vae_common.checkpoint import load_checkpoint

    state, config, _ = load_checkpoint(path)
    ds = data if data is not None else load_dataset(dataset)
    validate_images(ds.test, config.likelihood, name=f"{ds.name} test images")
    if ds.image_shape != config.input_shape:
        raise DataError(
            f"dataset {ds.name} has images of shape {ds.image_shape} but checkpoint {path} "
            f"expects {config.input_shape}"
        )
    trainer = make_trainer(backend, config, TrainConfig(), dtype, device)
    trainer.load_state_dict(state)
    result = trainer.evaluate(ds.test, seed=seed, batch_size=batch_size, iwae_k=iwae_k)
    for key in ("neg_elbo", "reconstruction", "kl", "neg_iwae"):
        value = result[key]
        if value is not None and not np.isfinite(value):
            raise TrainingError(
                f"evaluating {path} ({backend}, {dtype}) on {ds.name} gave {key} = {value}, "
                "not a result to report: the model overflows on this data"
            )
    result.update({"backend": backend, "dtype": dtype})
    return result
