"""The files ``vae generate`` writes from a ``vae_tools.generator.Generator``: what to generate
from (a dataset split or a ``.npy`` file), the target paths (refused before any work), and the
``.npy`` arrays and ``.png`` grids of samples, reconstructions, interpolations and latent means.

``Generator``, ``load_generator`` and the prior noise live in ``vae_tools.generator`` and are
importable from here too:

    gen = load_generator("runs/d-torch/checkpoint.safetensors", "torch")
    write_samples(gen, "out", n=64, seed=0, overwrite=False)  # samples.png, samples.npy, ...
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vae_common.checkpoint import atomic_write_bytes
from vae_common.data import DataSource
from vae_common.errors import DataError, UsageError
from vae_tools.generator import (
    DEFAULT_BATCH,
    PRIOR_STREAM,
    Generator,
    interpolation_latents,
    load_generator,
    prior_noise,
)

SAMPLES = ("samples.png", "samples.npy", "samples_z.npy")
RECONSTRUCTIONS = ("reconstructions.png", "reconstructions.npy")
INTERPOLATION = ("interpolation.png", "interpolation.npy", "interpolation_z.npy")
LATENTS = ("latent_means.npy", "labels.npy")


def inputs(
    generator: Generator,
    dataset: str | DataSource | None,
    split: str = "test",
    images: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images (N, C, H, W), labels (N,) or None)`` to generate from: the ``.npy`` file
    ``images``, else the ``split`` (``"test"`` or ``"train"``) of ``dataset`` (None: the dataset
    the checkpoint records, see ``Generator.load_data``)."""
    if images is not None:
        if dataset is not None:
            raise UsageError("give --images or --dataset, not both")
        return load_images(images), None
    if split not in ("test", "train"):
        raise UsageError(f"split must be 'test' or 'train', got {split!r}")
    ds = generator.load_data(dataset)
    labels = getattr(ds, f"{split}_labels", None)
    return getattr(ds, split), None if labels is None else np.asarray(labels)


def load_images(path: str | Path) -> np.ndarray:
    """The images of a ``.npy`` file, (N, C, H, W) floating point (checked by the trainer)."""
    path = Path(path)
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy file: {exc}") from None
    if not isinstance(x, np.ndarray):
        raise DataError(f"{path} holds several arrays (an .npz?); give one (N, C, H, W) .npy array")
    return x


def targets(out: str | Path, names: Sequence[str], overwrite: bool) -> list[Path]:
    """The paths ``names`` in the directory ``out``, refused before any work unless writable.

    Raises:
      UsageError: ``out`` exists and is not a directory, or (without ``overwrite``) one of the
      files exists already (the message names it).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    paths = [out / name for name in names]
    if not overwrite:
        for path in paths:
            if path.exists() or path.is_symlink():
                raise UsageError(f"{path} exists; pass --overwrite to replace it")
    return paths


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` of ``array`` to ``path``, atomically (a reader sees no partial file)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_samples(
    generator: Generator, out: str | Path, n: int, seed: int, overwrite: bool, ncols: int = 8
) -> list[Path]:
    """``samples.png`` (a grid), ``samples.npy`` (n, C, H, W) and ``samples_z.npy`` (n, L)."""
    from vae_tools import plots

    png, npy, znpy = targets(out, SAMPLES, overwrite)
    z = prior_noise(n, seed, generator.config.latent_dim, generator.dtype)
    images = generator.decode(z)
    save_array(npy, images)
    save_array(znpy, z)
    title = f"samples from the prior (seed {seed})"
    plots.save_samples(png, images, ncols=min(ncols, n), title=title)
    return [png, npy, znpy]


def write_reconstructions(
    generator: Generator, out: str | Path, x: np.ndarray, overwrite: bool, ncols: int = 8
) -> list[Path]:
    """``reconstructions.png`` (inputs above reconstructions) and ``reconstructions.npy``."""
    from vae_tools import plots

    png, npy = targets(out, RECONSTRUCTIONS, overwrite)
    recon = generator.reconstructions(x)
    save_array(npy, recon)
    plots.save_reconstructions(png, np.asarray(x), recon, ncols=min(ncols, len(recon)))
    return [png, npy]


def write_interpolation(
    generator: Generator,
    out: str | Path,
    x_a: np.ndarray,
    x_b: np.ndarray,
    steps: int,
    overwrite: bool,
) -> list[Path]:
    """``interpolation.png`` (one row per pair), ``interpolation.npy`` (P, steps, C, H, W) and
    ``interpolation_z.npy`` (P, steps, L) for pairs x_a, x_b (P, C, H, W)."""
    from vae_tools import plots

    png, npy, znpy = targets(out, INTERPOLATION, overwrite)
    z = generator.interpolation_latents(x_a, x_b, steps)
    images = generator.decode_grid(z)
    save_array(npy, images)
    save_array(znpy, z)
    flat = images.reshape((-1,) + images.shape[2:])
    plots.save_samples(png, flat, ncols=steps, title="latent interpolation (posterior means)")
    return [png, npy, znpy]


def write_latents(
    generator: Generator,
    out: str | Path,
    x: np.ndarray,
    labels: np.ndarray | None,
    overwrite: bool,
    batch_size: int = DEFAULT_BATCH,
) -> list[Path]:
    """``latent_means.npy`` (N, L) and, when the images have labels, ``labels.npy`` (N,)."""
    names = LATENTS if labels is not None else LATENTS[:1]
    paths = targets(out, names, overwrite)
    means = generator.encode_dataset(x, batch_size)
    save_array(paths[0], means)
    if labels is not None:
        save_array(paths[1], np.asarray(labels))
    return paths


__all__ = [
    "DEFAULT_BATCH",
    "PRIOR_STREAM",
    "Generator",
    "inputs",
    "interpolation_latents",
    "load_generator",
    "load_images",
    "prior_noise",
    "save_array",
    "targets",
    "write_interpolation",
    "write_latents",
    "write_reconstructions",
    "write_samples",
]
