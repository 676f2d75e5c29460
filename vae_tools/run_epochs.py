"""The trainer of a run and its epochs: ``make_trainer``, then ``train_epochs`` (each epoch
trained, checked, evaluated on the validation set and committed by ``vae_tools.run_commit``).

- Every example is used once per epoch: the ``n % batch_size`` examples the full batches leave
  over (``vae_common.data.last_batch_indices``) are one more, smaller Adam step after the
  epoch's full batches (``train_last_batch``), unless ``RunSettings.drop_last``. That step runs
  through ``Trainer.run_steps`` with its noise (and dynamic binarization) drawn in numpy, so it
  is the same step in both backends.
- An epoch is committed only if its losses, its held-out metrics, every weight and every Adam
  moment are finite; otherwise ``TrainingError`` names the first bad one and the committed files
  stay.
- Data-parallel (``Ranks``, ``vae_tools.run_ranks``): the full batches are split over the
  devices (``run_ranks.check_split`` refuses a ``batch_size`` that does not split); the run's
  trainer is made with ``uneven="replicate"``, so a last batch the devices do not divide is
  computed whole on every device, the 1-device step (one that divides is split too). Process 0
  alone evaluates and commits, and every process settles each epoch, so a failure on any
  process stops all of them at that epoch.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.data import batch_indices, binarize, float_images, last_batch_indices
from vae_common.errors import TrainingError, VAEError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig
from vae_tools.run_commit import Job, commit_epoch
from vae_tools.run_data import RunData
from vae_tools.run_dir import RunDir
from vae_tools.run_log import RunLog
from vae_tools.run_metrics import best_epoch, epochs_since_best
from vae_tools.run_ranks import Ranks

BACKENDS = ("jax", "torch")
# The last, smaller batch of epoch e draws from ``default_rng([seed, e, stream])``: its noise,
# and its binarization when dynamic. A third, non-zero entry keeps them apart from the batch
# order's ``default_rng([seed, e])``.
LAST_NOISE_STREAM = 1
LAST_BINARIZE_STREAM = 2


def make_trainer(
    backend: str,
    config: VAEConfig,
    train: TrainConfig,
    dtype: str,
    device: str | None = None,
    compile: bool | str = False,
    precision: str = "float32",
    devices: int | None = None,
    uneven: str = "refuse",
) -> TrainerBase:
    """The backend's ``Trainer`` (imported only when asked for: ``BackendUnavailableError``
    naming the extra to install when its framework is missing), data-parallel over ``devices``
    devices when given (``vae_tools.run_ranks``), with ``uneven`` for a batch they do not
    divide (``TrainerBase``)."""
    from vae_tools._backends import import_backend

    module = import_backend(backend)
    if backend == "jax" and dtype == "float64":
        module.enable_float64()
    trainer: type[TrainerBase] = module.Trainer
    return trainer(
        config,
        train,
        dtype=dtype,
        device=device,
        compile=compile,
        precision=precision,
        devices=devices,
        uneven=uneven,
    )


def last_batch_arrays(
    trainer: TrainerBase, x: np.ndarray, index: np.ndarray, seed: int, epoch: int, dynamic: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The images (1, b, C, H, W) and noise (1, b, L) of the last, smaller batch of an epoch,
    in the trainer's dtype, for ``Trainer.run_steps`` (see ``train_last_batch``)."""
    xb = float_images(np.asarray(x[index]))
    if dynamic:
        xb = binarize(xb, np.random.default_rng([seed, epoch, LAST_BINARIZE_STREAM]))
    rng = np.random.default_rng([seed, epoch, LAST_NOISE_STREAM])
    eps = rng.standard_normal((len(index), trainer.config.latent_dim)).astype(trainer.dtype)
    return xb[None].astype(trainer.dtype), eps[None]


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
    trainer's step count, as any step): the same arrays, hence the same step, in both backends
    and on any number of devices (split when they divide b; otherwise computed whole on every
    device, which a trainer made with ``uneven="replicate"`` does).
    """
    xs, eps = last_batch_arrays(trainer, x, index, seed, epoch, dynamic)
    return float(trainer.run_steps(xs, eps)[0])


def train_epochs(
    job: Job,
    data: RunData,
    metrics: list[dict[str, Any]],
    epochs: int,
    log: RunLog,
    eval_batch_size: int,
    patience: int,
    test_every_epoch: bool,
    ranks: Ranks | None = None,
    stream: bool = False,
    prefetch: int | None = None,
) -> None:
    """Epochs ``len(metrics) + 1 .. epochs``, each committed (``metrics`` grows in place), or
    fewer when early stopping ends the run.

    The training images go to the device once, or with ``stream`` stay on the host and go
    batch by batch (``Trainer.put_data(x, stream=True, prefetch=prefetch)``): the same steps.

    With several processes (``ranks``) every process trains each epoch; process 0 alone
    evaluates the held-out sets and commits, and all of them settle every epoch
    (``Ranks.settle``), so they stop together. Each record holds the epoch's training
    throughput, ``samples_per_s`` (examples trained / ``seconds``), and ``data_wait_share``
    (the share of ``seconds`` spent forming batches on the host: the epoch's batch indices and
    the last batch's images and noise, plus the seconds ``train_epoch`` waited for its batches,
    the trainer's ``data_wait_s``: streamed data), and ``devices``.
    """
    run_dir, trainer, settings = job.run_dir, job.trainer, job.settings
    ranks = ranks if ranks is not None else Ranks(trainer.backend)
    dynamic = job.train_config.binarize == "dynamic"
    n = len(data.train)
    device_data = trainer.put_data(data.train, stream=stream, prefetch=prefetch)
    for epoch in range(len(metrics) + 1, epochs + 1):
        # Process 0 holds the validation metrics: its verdict stops every process.
        if patience and not ranks.ok(not (ranks.writer and epochs_since_best(metrics) >= patience)):
            return
        ranks.kill_point(epoch)
        kept = _kept(run_dir)
        start = time.perf_counter()
        batches = batch_indices(n, settings.batch_size, settings.seed, epoch)
        last = np.empty(0, np.int64)
        if not settings.drop_last:
            last = last_batch_indices(n, settings.batch_size, settings.seed, epoch)
        forming = time.perf_counter() - start
        with ranks.collective(f"in epoch {epoch}", kept):
            losses = trainer.train_epoch(device_data, batches, settings.seed, epoch)
            forming += trainer.data_wait_s
            sizes = [settings.batch_size] * len(losses)
            if last.size:
                formed = time.perf_counter()
                xs, eps = last_batch_arrays(
                    trainer, data.train, last, settings.seed, epoch, dynamic
                )
                forming += time.perf_counter() - formed
                losses = np.append(losses, float(trainer.run_steps(xs, eps)[0]))
                sizes.append(len(last))
        train_seconds = time.perf_counter() - start
        error: VAEError | None = None
        record: dict[str, Any] = {}
        try:
            record = _epoch_record(
                job, data, epoch, losses, sizes, kept, ranks, eval_batch_size, test_every_epoch
            )
            record.update(
                {
                    "seconds": train_seconds,
                    "backend": trainer.backend,
                    "samples_per_s": float(np.sum(sizes)) / max(train_seconds, 1e-9),
                    "data_wait_share": min(1.0, forming / max(train_seconds, 1e-9)),
                    "devices": ranks.devices or 1,
                }
            )
            if ranks.writer:
                improved = data.val is not None and best_epoch([*metrics, record]) == epoch
                commit_epoch(job, record, improved)
        except VAEError as exc:
            error = exc
        with ranks.collective(f"after epoch {epoch}", kept):
            ranks.settle(error)
        metrics.append(record)
        log.epoch(record)
        if ranks.writer and patience and epochs_since_best(metrics) >= patience and epoch < epochs:
            best = best_epoch(metrics)
            log.note(
                f"early stopping after epoch {epoch}: the validation -ELBO has not improved for "
                f"{patience} epochs (best: epoch {best})"
            )


def _epoch_record(
    job: Job,
    data: RunData,
    epoch: int,
    losses: np.ndarray,
    sizes: list[int],
    kept: str,
    ranks: Ranks,
    eval_batch_size: int,
    test_every_epoch: bool,
) -> dict[str, Any]:
    """The metrics record of a trained epoch after its checks (``TrainingError`` naming the
    first non-finite loss, weight, Adam moment or held-out metric); the held-out sets are
    evaluated by process 0 only."""
    trainer, settings = job.trainer, job.settings
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
    held_out = [("val", data.val)] if data.val is not None and ranks.writer else []
    if test_every_epoch and ranks.writer:
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
    return record


def _kept(run_dir: RunDir | None) -> str:
    """What a failed epoch leaves, for its message (nothing to say where the run directory is
    another process's)."""
    if run_dir is None:
        return "The run directory is process 0's"
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
