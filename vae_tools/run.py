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

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vae_common.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    check_state,
    load_tensors,
    save_checkpoint,
    save_tensors,
)
from vae_common.config import VAEConfig
from vae_common.data import Dataset, batch_indices, binarize, load_dataset, validate_images
from vae_common.errors import DataError, ResumeError, TrainingError, UsageError
from vae_common.training import TrainConfig, optimizer_state_names

STATE_FORMAT = "vae-twin-train-state/1"
PARAM = "param."
BACKENDS = ("jax", "torch")


@dataclass(frozen=True)
class RunSettings:
    """What a resumed run must share with the original (besides the model and Adam settings)."""

    dataset: str
    batch_size: int = 128
    seed: int = 0
    dtype: str = "float32"
    static_binarize: bool = False


def make_trainer(
    backend: str,
    config: VAEConfig,
    train: TrainConfig,
    dtype: str,
    device: str | None = None,
    compile: bool = False,
):
    """The backend's ``Trainer`` (imported only when asked for)."""
    if backend == "jax":
        from vae_jax.device import enable_float64
        from vae_jax.train import Trainer

        if dtype == "float64":
            enable_float64()
    elif backend == "torch":
        from vae_torch.train import Trainer
    else:
        raise UsageError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    return Trainer(config, train, dtype=dtype, device=device, compile=compile)


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


def _settings_meta(config: VAEConfig, train: TrainConfig, settings: RunSettings) -> dict[str, str]:
    return {
        "config": config.to_json(),
        "train": train.to_json(),
        "settings": json.dumps(asdict(settings), sort_keys=True),
    }


def save_train_state(path: Path, trainer, config, train, settings, epoch: int) -> None:
    tensors = {PARAM + k: v for k, v in trainer.state_dict().items()}
    tensors.update(trainer.optimizer_state_dict())
    meta = _settings_meta(config, train, settings)
    meta.update(
        {
            "format": STATE_FORMAT,
            "epoch": str(epoch),
            "step": str(trainer.step),
            "backend": trainer.backend,
        }
    )
    save_tensors(path, tensors, meta)


def load_train_state(path: Path, config: VAEConfig, train: TrainConfig, settings: RunSettings):
    """Read a train state and refuse it unless it was made with the same settings.

    Returns:
      ``(params, optimizer_tensors, epoch, step)``.
    """
    tensors, meta = load_tensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state ({STATE_FORMAT})")
    stored = {k: meta.get(k) for k in ("config", "train", "settings")}
    wanted = _settings_meta(config, train, settings)
    for key in ("config", "train", "settings"):
        if stored[key] != wanted[key]:
            old, new = json.loads(stored[key] or "{}"), json.loads(wanted[key])
            diffs = {
                k: [old.get(k), new.get(k)]
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            }
            raise ResumeError(
                f"--resume refused: {path} was made with a different {key}; differing fields "
                f"[stored, requested]: {json.dumps(diffs)}"
            )
    params = {k[len(PARAM) :]: v for k, v in tensors.items() if k.startswith(PARAM)}
    check_state(params, config, what=str(path))
    opt = {k: v for k, v in tensors.items() if not k.startswith(PARAM)}
    missing = [n for n in optimizer_state_names(config) if n not in opt]
    if missing:
        raise CheckpointError(f"{path} lacks optimizer tensors {missing[:3]}")
    return params, opt, int(meta["epoch"]), int(meta["step"])


# metrics.jsonl keys renamed in version 0.2 (they hold the *negative* ELBO): old -> new.
RENAMED_METRICS = {"test_elbo": "test_neg_elbo"}


def _read_metrics(path: Path, epochs_done: int) -> list[dict]:
    """The per-epoch records up to ``epochs_done``; records written before the renames in
    ``RENAMED_METRICS`` are read under the new names."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [{RENAMED_METRICS.get(k, k): v for k, v in m.items()} for m in lines]
    return [m for m in lines if m["epoch"] <= epochs_done]


def _write_metrics(path: Path, metrics: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(m) + "\n" for m in metrics).encode())


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
    metrics = _read_metrics(metrics_path, first_epoch - 1)
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
        _write_metrics(metrics_path, metrics)
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


def save_run_plots(out: Path, trainer, ds: Dataset, metrics: list[dict], seed: int) -> None:
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
