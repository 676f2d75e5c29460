"""The PNGs a training run writes at its end (``save_run_plots``: reconstructions, prior samples,
loss curves, the latent space), drawn by ``vae_tools.plots``; ``loss_curve_series`` turns the
metrics into one curve per segment of epochs one backend trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vae_common.data import Dataset
from vae_common.trainer import TrainerBase
from vae_tools.run_data import RunData
from vae_tools.run_dir import RunDir


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
