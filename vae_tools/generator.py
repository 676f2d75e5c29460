"""``Generator``: a checkpoint loaded into either backend for generation (numpy in, numpy out):
samples from the prior, reconstructions, latent interpolations and the latent means of a dataset.

Everything goes through the shared training contract (``TrainerBase.sample``, ``reconstruct``
and ``encode_mean``), so the JAX and the PyTorch trainer compute the same numbers, and the prior
noise comes from ``vae_common.data.standard_normal(seed, PRIOR_STREAM, (n, L))``, the same array
in both backends: one checkpoint, one seed, the same samples up to rounding (float64: 1e-12).

    gen = load_generator("runs/d-torch/checkpoint.safetensors", "torch")
    images = gen.prior_samples(64, seed=0)                 # (64, C, H, W), E[x|z], z ~ N(0, I)
    means = gen.encode_dataset(load_dataset("digits").test)  # (N, L) posterior means

The backend is imported when ``load_generator`` asks for it (``vae_tools._backends``): a
generator needs only the framework of the backend it names. The files ``vae generate`` writes
are ``vae_tools.generate``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_common.checkpoint import load_checkpoint, recorded_source
from vae_common.config import VAEConfig
from vae_common.data import ARRAYS, Dataset, DataSource, load_dataset, standard_normal
from vae_common.errors import ConfigError, DataError, ShapeError, UsageError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig

# The stream of ``standard_normal`` the prior noise is drawn from: 5, the stream of the
# ``samples.png`` that ``vae train`` writes (``default_rng([seed, 5])``), so
# ``prior_samples(64, seed)`` shows the run's own samples again.
PRIOR_STREAM = 5
# Examples encoded or decoded at once (bounds device memory for a whole dataset).
DEFAULT_BATCH = 500


def prior_noise(n: int, seed: int, latent_dim: int, dtype: str = "float64") -> np.ndarray:
    """z ~ N(0, I), (n, latent_dim): ``standard_normal(seed, PRIOR_STREAM, (n, latent_dim))``."""
    _check_count("n", n, 1)
    return standard_normal(int(seed), PRIOR_STREAM, (int(n), int(latent_dim)), dtype)


def interpolation_latents(mean_a: np.ndarray, mean_b: np.ndarray, steps: int) -> np.ndarray:
    """Points evenly spaced on the segments from ``mean_a`` to ``mean_b``, both ends included.

    Args:
      mean_a, mean_b: (P, L) latent means (P pairs).
      steps: points per segment, >= 2.

    Returns:
      (P, steps, L): ``(1 - t) * mean_a + t * mean_b`` for t = 0, 1/(steps-1), ..., 1.
    """
    _check_count("steps", steps, 2)
    a, b = np.asarray(mean_a), np.asarray(mean_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ShapeError(f"mean_a and mean_b must both be (P, L), got {a.shape} and {b.shape}")
    t = np.linspace(0.0, 1.0, int(steps), dtype=np.float64)[None, :, None]
    return ((1.0 - t) * a[:, None, :] + t * b[:, None, :]).astype(a.dtype)


def _check_count(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class Generator:
    """A checkpoint loaded into one backend's trainer, for generation.

    Attributes:
      trainer: the backend's ``Trainer`` holding the checkpoint's weights.
      checkpoint: the file it was loaded from.
      metadata: the checkpoint's metadata strings (``dataset``, ``backend``, ``epoch`` when
        ``vae train`` wrote it).
    """

    trainer: TrainerBase
    checkpoint: Path
    metadata: dict[str, str]

    @property
    def config(self) -> VAEConfig:
        return self.trainer.config

    @property
    def backend(self) -> str:
        return self.trainer.backend

    @property
    def dtype(self) -> str:
        return self.trainer.dtype

    @property
    def source(self) -> DataSource | None:
        """How the checkpoint's training data was loaded, when it records that: its ``data``
        entry (``vae_common.checkpoint.recorded_source``: spec, layout, resize, held-out split),
        else its ``dataset`` spec (older checkpoints); None for a checkpoint that records none.
        """
        source = recorded_source(self.metadata, self.checkpoint)
        spec = self.metadata.get("dataset")
        if source is None and spec:
            source = DataSource(spec)
        return source

    @property
    def dataset(self) -> str | None:
        """The dataset spec the checkpoint records (``vae train`` writes it), else None."""
        source = self.source
        return None if source is None else source.spec

    def load_data(self, spec: str | DataSource | None = None) -> Dataset:
        """The dataset ``spec`` names (a spec string or a ``DataSource``: with a layout,
        resize or color), else the one the checkpoint was trained on (loaded again
        from ``source``, grey levels: a binarized run's images are not binarized here); its
        images must have the model's shape.

        Raises:
          UsageError: no ``spec``, and the checkpoint records no dataset, or one given as arrays
            from Python (which cannot be loaded again). DataError: it cannot be loaded or its
            images are not of the model's shape.
        """
        if spec is not None:
            ds = load_dataset(spec)
        else:
            source = self.source
            if source is None:
                raise UsageError(
                    f"{self.checkpoint} does not record the dataset it was trained on; give "
                    "--dataset (or --images FILE.npy)"
                )
            if source.spec == ARRAYS:
                raise UsageError(
                    f"{self.checkpoint} was trained on arrays given from Python, which cannot be "
                    "loaded again; give --dataset (or --images FILE.npy)"
                )
            ds = load_dataset(source)
        if ds.image_shape != self.config.input_shape:
            raise DataError(
                f"dataset {ds.name} has images of shape {ds.image_shape} but checkpoint "
                f"{self.checkpoint} expects {self.config.input_shape}"
            )
        return ds

    def prior_samples(self, n: int, seed: int = 0) -> np.ndarray:
        """E[x|z] for n draws z ~ N(0, I) (``prior_noise(n, seed, L)``), (n, C, H, W)."""
        return self.decode(prior_noise(n, seed, self.config.latent_dim, self.dtype))

    def decode(self, z: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """E[x|z] for latents z (N, L), (N, C, H, W), ``batch_size`` at a time."""
        z = np.asarray(z)
        if z.ndim != 2 or not len(z):
            raise ShapeError(
                f"z has shape {z.shape} but the model expects (batch, {self.config.latent_dim})"
            )
        return _batched(self.trainer.sample, z, batch_size)

    def reconstructions(self, x: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """E[x|z] at z = the posterior mean of each image of x (N, C, H, W), (N, C, H, W)."""
        return _batched(self.trainer.reconstruct, self._images(x), batch_size)

    def interpolate(self, x_a: np.ndarray, x_b: np.ndarray, steps: int = 10) -> np.ndarray:
        """Decoded points on the line between the posterior means of two images.

        Args:
          x_a, x_b: one image each (C, H, W), or P images each (P, C, H, W) for P pairs.
          steps: images per pair, >= 2, the first decoding x_a's mean and the last x_b's.

        Returns:
          (steps, C, H, W) for one pair, (P, steps, C, H, W) for P pairs: E[x|z] at
          ``interpolation_latents(mean(x_a), mean(x_b), steps)``.
        """
        z = self.interpolation_latents(x_a, x_b, steps)
        images = self.decode_grid(z)
        return images[0] if np.ndim(x_a) == 3 else images

    def interpolation_latents(self, x_a: np.ndarray, x_b: np.ndarray, steps: int) -> np.ndarray:
        """The latents ``interpolate`` decodes, (P, steps, L) (P = 1 for single images)."""
        a, b = _pairs(x_a), _pairs(x_b)
        if a.shape[0] != b.shape[0]:
            raise ShapeError(f"x_a holds {len(a)} images but x_b {len(b)}; give one per pair")
        mean_a, mean_b = self.trainer.encode_mean(a), self.trainer.encode_mean(b)
        return interpolation_latents(mean_a, mean_b, steps)

    def decode_grid(self, z: np.ndarray) -> np.ndarray:
        """E[x|z] for latents z (P, S, L), (P, S, C, H, W)."""
        z = np.asarray(z)
        if z.ndim != 3:
            raise ShapeError(f"z has shape {z.shape} but must be (P, S, {self.config.latent_dim})")
        images = self.decode(z.reshape((-1,) + z.shape[2:]))
        return images.reshape(z.shape[:2] + images.shape[1:])

    def encode_dataset(self, x: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Posterior means of every image of x (N, C, H, W), (N, L), ``batch_size`` at a time."""
        return _batched(self.trainer.encode_mean, self._images(x), batch_size)

    def _images(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or not len(x):
            # The trainer checks the full shape and the dtype; batching needs (N >= 1, ...).
            raise ShapeError(
                f"x has shape {x.shape} but the model expects (batch, "
                f"{', '.join(map(str, self.config.input_shape))})"
            )
        return x


def _pairs(x: np.ndarray) -> np.ndarray:
    """One image (C, H, W) as a batch of one; a batch (P, C, H, W) as it is."""
    x = np.asarray(x)
    return x[None] if x.ndim == 3 else x


def _batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` applied to x (N, ...) ``batch_size`` rows at a time, the results concatenated."""
    _check_count("batch_size", batch_size, 1)
    step = int(batch_size)
    return np.concatenate([fn(x[i : i + step]) for i in range(0, len(x), step)])


def load_generator(
    checkpoint: str | Path,
    backend: str,
    dtype: str = "float32",
    device: str | None = None,
) -> Generator:
    """Load ``checkpoint`` (``vae_common.checkpoint``: every tensor checked) into ``backend``.

    Args:
      backend: ``"jax"`` or ``"torch"``; only its framework is imported.
      dtype: ``"float32"`` or ``"float64"`` (JAX: switches 64-bit mode on for the process).
      device: the backend's device name (None: its default).

    Raises:
      CheckpointError: the file cannot be loaded. BackendUnavailableError: the backend's
      framework is not installed (the message names the extra).
    """
    from vae_tools.run import make_trainer

    state, config, metadata = load_checkpoint(checkpoint)
    trainer = make_trainer(backend, config, TrainConfig(), dtype, device)
    trainer.load_state_dict(state)
    return Generator(trainer, Path(checkpoint), metadata)


__all__ = [
    "DEFAULT_BATCH",
    "PRIOR_STREAM",
    "Generator",
    "interpolation_latents",
    "load_generator",
    "prior_noise",
]
