"""The part of the training contract that uses a model's weights without training them:
evaluation, reconstruction, sampling and posterior means.

``vae_common.trainer.TrainerBase`` inherits ``InferenceBase``; a backend implements its hooks
(``_``-prefixed) with its own arrays. These run unsharded in a data-parallel trainer too: one
whole batch on one device, any batch size. Arrays cross this interface as numpy arrays.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from vae_common import checks
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError
from vae_common.evaluation import evaluate_batches


class InferenceBase(abc.ABC):
    """``evaluate``, ``reconstruct``, ``sample`` and ``encode_mean`` of a trainer's current
    weights; each refuses (``ConfigError``) to run before ``load_state_dict``."""

    config: VAEConfig
    dtype: str
    _loaded: bool

    def evaluate(
        self, x: np.ndarray, seed: int = 0, batch_size: int = 500, iwae_k: int = 0
    ) -> dict[str, Any]:
        """Mean -ELBO, its terms and (``iwae_k > 1``) the IWAE estimate of -log p(x), in nats.

        The noise comes from ``vae_common.batches.standard_normal(seed, stream, ...)``, the same
        arrays in both backends, so one checkpoint evaluates to the same numbers in each. Keys:
        see ``vae_common.evaluation.evaluate_batches``.
        """
        self._require_weights()
        return evaluate_batches(
            self._batch_terms,
            self._batch_iwae,
            self._images("x", x, self.config.likelihood),
            self.config.latent_dim,
            self.dtype,
            seed,
            batch_size,
            iwae_k,
        )

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """E[x|z] at z = the posterior mean, (B, C, H, W)."""
        self._require_weights()
        return self._reconstruct(self._images("x", x, None))

    def sample(self, z: np.ndarray) -> np.ndarray:
        """E[x|z] for latents z (B, L) (e.g. prior draws), (B, C, H, W)."""
        self._require_weights()
        z = np.asarray(z)
        checks.check_latents("z", z.shape, self.config.latent_dim)
        checks.check_dtype("z", checks.dtype_name(z.dtype))
        return self._sample(z)

    def encode_mean(self, x: np.ndarray) -> np.ndarray:
        """Posterior means (B, L)."""
        self._require_weights()
        return self._encode_mean(self._images("x", x, None))

    def _images(self, name: str, x: Any, likelihood: str | None) -> np.ndarray:
        # Refused before any cast to the model dtype (which would drop an imaginary part).
        return checks.image_array(name, x, self.config.input_shape, likelihood)

    def _require_weights(self) -> None:
        if not self._loaded:
            raise ConfigError(
                f"{type(self).__module__}.{type(self).__name__} has no weights yet: call "
                "load_state_dict first (e.g. with vae_common.spec.init_canonical(config, seed))"
            )

    # The hooks each backend implements on its own arrays:

    @abc.abstractmethod
    def _batch_terms(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(reconstruction (b,), kl (b,))`` as float64 numpy arrays."""

    @abc.abstractmethod
    def _batch_iwae(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """The negative IWAE bound (b,) for eps (K, b, L), as a float64 numpy array."""

    @abc.abstractmethod
    def _reconstruct(self, x: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _sample(self, z: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _encode_mean(self, x: np.ndarray) -> np.ndarray: ...


__all__ = ["InferenceBase"]
