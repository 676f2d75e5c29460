"""A training run on disk: ``vae train`` and the demo use it with either backend.

Files in the run directory:
- ``train_state.safetensors``: weights, Adam's moments and progress (epoch, step) under canonical
  names, with every setting in its metadata; what ``--resume`` reads. Written atomically after
  every epoch, so a kill at any moment loses at most the epoch in progress.
- ``checkpoint.safetensors``: the canonical checkpoint (``vae_common.checkpoint``), atomically
  rewritten every epoch.
- ``metrics.jsonl``: one JSON line per finished epoch (atomically rewritten).
- PNGs at the end: reconstructions, prior samples, loss curves, and the latent space if 2-D.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import (
    save_checkpoint,
)
from vae_common.config import VAEConfig
from vae_common.data import Dataset, batch_indices, binarize, load_dataset, validate_images
from vae_common.errors import DataError, ResumeError, TrainingError, UsageError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig
from vae_tools.run_state import (
    RunSettings,
    load_train_state,
    read_metrics,
    save_train_state,
    write_metrics,
)

BACKENDS = ("jax", "torch")


def make_trainer(
    backend: str,
    config: VAEConfig,
    train: TrainConfig,
    dtype: str,
    device: str | None = None,
    compile: bool = False,
) -> TrainerBase:
    """The backend's ``Trainer`` (imported only when asked for)."""
    trainer: type[TrainerBase]
    if backend == "jax":
        from vae_jax.device import enable_float64
        from vae_jax.train import Trainer as JaxTrainer

        if dtype == "float64":
            enable_float64()
        trainer = JaxTrainer
    elif backend == "torch":
        from vae_torch.train import Trainer as TorchTrainer

        trainer = TorchTrainer
    else:
        raise UsageError(f"unknown backend {backend!r}; use one of {BACKENDS}")
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
    init_state: dict | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    plots: bool = True,
    eval_batch_size: int = 500,
) -> list[dict]:
    """Train for ``epochs`` epochs (in total, counting resumed ones); returns the metrics rows.

    Raises:
      TrainingError: the loss became NaN or Inf (the message names the epoch and step; the files
        of the last good epoch are kept).
      ResumeError: a resume does not fit, or ``out`` already holds a run and ``resume`` is False.
    """
    out = Path(out)
    state_path, ckpt_path = out / "train_state.safetensors", out / "checkpoint.safetensors"
    metrics_path = out / "metrics.jsonl"
    if epochs < 1:
        raise UsageError(f"epochs must be positive, got {epochs}")
    if state_path.exists() and not resume:
        raise ResumeError(
            f"{out} already holds a training run; pass --resume or choose another --out"
        )
    ds = prepare_data(settings, dataset, config.likelihood)
    if ds.image_shape != config.input_shape:
        raise DataError(
            f"dataset {ds.name} has images of shape {ds.image_shape} but the model expects "
            f"{config.input_shape}"
        )
    trainer = make_trainer(backend, config, train_config, settings.dtype, device, compile)
    first_epoch = 1
    if resume and state_path.exists():
        params, opt, done, step = load_train_state(state_path, config, train_config, settings)
        trainer.load_state_dict(params)
        trainer.load_optimizer_state_dict(opt, step)
        first_epoch = done + 1
    else:
        if init_state is None:
            from vae_common.spec import init_canonical

            init_state = init_canonical(config, settings.seed, settings.dtype)
        trainer.load_state_dict(init_state)
    metrics = read_metrics(metrics_path, first_epoch - 1)
    data = trainer.put_data(ds.train)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, initial=first_epoch - 1, desc=f"{backend} training", unit="epoch")
    for epoch in range(first_epoch, epochs + 1):
        start = time.perf_counter()
        batches = batch_indices(len(ds.train), settings.batch_size, settings.seed, epoch)
        losses = trainer.train_epoch(data, batches, settings.seed, epoch)
        train_seconds = time.perf_counter() - start
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            if bar:
                bar.close()
            kept = (
                f"The last good checkpoint (epoch {epoch - 1}) is kept in {out}"
                if epoch > 1
                else "No checkpoint was written"
            )
            raise TrainingError(
                f"loss became {losses[bad[0]]} at epoch {epoch}, step {int(bad[0]) + 1} of "
                f"{len(losses)}; stopped. {kept}. Try a smaller --lr."
            )
        test = trainer.evaluate(ds.test, seed=settings.seed, batch_size=eval_batch_size)
        metrics.append(
            {
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
        )
        # Order matters for kill -9: metrics first, then the resumable state, then the
        # checkpoint. A resume truncates metrics to the epochs the state has.
        write_metrics(metrics_path, metrics)
        save_train_state(state_path, trainer, config, train_config, settings, epoch)
        save_checkpoint(
            ckpt_path,
            trainer.state_dict(),
            config,
            {
                "epoch": str(epoch),
                "backend": backend,
                "dataset": settings.dataset,
            },
        )
        if bar:
            bar.set_postfix(loss=f"{metrics[-1]['train_loss']:.2f}", test=f"{test['neg_elbo']:.2f}")
            bar.update(1)
    if bar:
        bar.close()
    if plots:
        save_run_plots(out, trainer, ds, metrics, settings.seed)
    return metrics


def save_run_plots(
    out: Path, trainer: TrainerBase, ds: Dataset, metrics: list[dict[str, Any]], seed: int
) -> None:
    from vae_tools import plots

    x = ds.test[:32]
    plots.save_reconstructions(out / "reconstructions.png", x, trainer.reconstruct(x))
    z = np.random.default_rng([seed, 5]).standard_normal((64, trainer.config.latent_dim))
    plots.save_samples(out / "samples.png", trainer.sample(z))
    curve = [v for m in metrics for v in m["train_losses"]]
    plots.save_loss_curves(
        out / "loss_curves.png",
        {trainer.backend: curve},
        {trainer.backend: ([m["step"] for m in metrics], [m["test_neg_elbo"] for m in metrics])},
    )
    if trainer.config.latent_dim == 2:
        n = min(len(ds.test), 5000)
        plots.save_latent_space(
            out / "latent_space.png", trainer.encode_mean(ds.test[:n]), ds.test_labels[:n]
        )


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
) -> dict:
    """Test-set -ELBO, its terms and the IWAE estimate for a checkpoint in ``backend``."""
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
    result.update({"backend": backend, "dtype": dtype})
    return result
