"""PNG figures of a run (matplotlib, headless): reconstructions, prior samples, loss curves and
the 2-D latent space. Inputs are numpy arrays; nothing here knows a backend."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

Path = str | os.PathLike[str]


def image_grid(images: np.ndarray, ncols: int) -> np.ndarray:
    """Tile (N, C, H, W) images in [0, 1] into one (rows*H, ncols*W[, C]) array, 1-pixel gaps."""
    n, c, h, w = images.shape
    rows = -(-n // ncols)
    grid = np.ones((rows * (h + 1) - 1, ncols * (w + 1) - 1, c), dtype=np.float32)
    for i, img in enumerate(np.clip(images, 0.0, 1.0)):
        r, q = divmod(i, ncols)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = img.transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def _save(fig: Figure, path: Path) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _show(ax: Axes, grid: np.ndarray, title: str) -> None:
    ax.imshow(
        grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    ax.set_title(title)
    ax.axis("off")


def save_reconstructions(
    path: Path, inputs: np.ndarray, recons: np.ndarray, ncols: int = 8
) -> None:
    """Inputs (top) next to their reconstructions (bottom)."""
    fig, axes = plt.subplots(2, 1, figsize=(ncols * 0.8, 2 * 0.8 * -(-len(inputs) // ncols) + 1))
    _show(axes[0], image_grid(inputs, ncols), "inputs")
    _show(axes[1], image_grid(recons, ncols), "reconstructions")
    _save(fig, path)


def save_samples(
    path: Path, samples: np.ndarray, ncols: int = 8, title: str = "samples from the prior"
) -> None:
    fig, ax = plt.subplots(figsize=(ncols * 0.8, 0.8 * -(-len(samples) // ncols) + 0.5))
    _show(ax, image_grid(samples, ncols), title)
    _save(fig, path)


def save_loss_curves(
    path: Path,
    train: Mapping[str, Sequence[float] | np.ndarray | tuple[Sequence[int], Sequence[float]]],
    test: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
    held_out_name: str = "test",
) -> None:
    """Training loss per step and held-out -ELBO per epoch, one line per label (e.g. per backend,
    or per segment of epochs one backend trained).

    Args:
      train: ``{label: per-step losses}`` (drawn at steps 1, 2, ...) or ``{label: (global steps,
        per-step losses)}``.
      test: ``{label: (steps at epoch ends, -ELBO)}``.
      held_out_name: the split of ``test`` for the legend (``"test"``, ``"val"``).
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    colors: dict[str, Any] = {}
    for label, losses in train.items():
        if isinstance(losses, tuple):
            x, y = np.asarray(losses[0]), np.asarray(losses[1])
        else:
            y = np.asarray(losses)
            x = np.arange(1, len(y) + 1)
        (line,) = ax.plot(x, y, lw=1, alpha=0.8, label=f"{label} train")
        colors[label] = line.get_color()
    for label, (steps, values) in (test or {}).items():
        ax.plot(
            steps, values, "o--", ms=3, color=colors.get(label), label=f"{label} {held_out_name}"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("-ELBO (nats per example)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def save_latent_space(path: Path, z: np.ndarray, labels: np.ndarray | None) -> None:
    """Posterior means of a 2-D latent space, coloured by label (one colour without labels)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4)
    else:
        points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=4)
        fig.colorbar(points, ax=ax)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title("latent space (posterior means)")
    _save(fig, path)
