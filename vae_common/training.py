"""Training hyperparameters and the framework-neutral optimizer state, shared by both backends.

Adam's state is stored under canonical names (``adam.exp_avg.<param>``, ``adam.exp_avg_sq.<param>``
in PyTorch layouts), so a training state written by one backend is readable by the other.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_common.config import ConfigError, VAEConfig
from vae_common.spec import param_spec

EXP_AVG = "adam.exp_avg."
EXP_AVG_SQ = "adam.exp_avg_sq."


@dataclass(frozen=True)
class TrainConfig:
    """Adam and objective settings; the same numbers mean the same update in both backends.

    Attributes:
      lr: Adam learning rate.
      b1, b2, adam_eps: Adam's moment decays and denominator epsilon (PyTorch and optax defaults);
        both compute ``lr * m_hat / (sqrt(v_hat) + adam_eps)``.
      beta: weight of the KL term.
      warmup_steps: KL warm-up: the weight at 0-based step t is
        ``beta * min(1, t / warmup_steps)``;
        0 disables it.
      free_bits: nats per latent dimension (Kingma et al. 2016): the KL term becomes
        ``sum_j max(free_bits, mean_batch KL_j)``; 0 disables it (the plain summed KL).
      binarize: ``"none"``, or ``"dynamic"`` (a fresh Bernoulli draw of every batch, made on the
        device inside the training step). Static binarization is a data-loading choice.
    """

    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    binarize: str = "none"

    def __post_init__(self) -> None:
        for name in ("lr", "b1", "b2", "adam_eps", "beta", "free_bits"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite non-negative number, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ConfigError(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.binarize not in ("none", "dynamic"):
            raise ConfigError(f"binarize must be 'none' or 'dynamic', got {self.binarize!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Parse ``to_json``'s output; files written before the rename of ``eps`` to
        ``adam_eps`` (version 0.1 of this project) load too."""
        fields = json.loads(text)
        if "eps" in fields and "adam_eps" not in fields:
            fields["adam_eps"] = fields.pop("eps")
        return cls(**fields)


def beta_at(train: TrainConfig, step: Any, minimum: Any = min) -> Any:
    """KL weight at 0-based ``step``: ``beta * min(1, step / warmup_steps)``.

    ``minimum`` is the framework's elementwise minimum (``jnp.minimum`` for a traced step).
    """
    if train.warmup_steps == 0:
        return train.beta
    return train.beta * minimum(1.0, step / train.warmup_steps)


def optimizer_state_names(config: VAEConfig) -> list[str]:
    """Canonical names of Adam's moment tensors for ``config``."""
    names = [s.name for s in param_spec(config)]
    return [EXP_AVG + n for n in names] + [EXP_AVG_SQ + n for n in names]


def split_optimizer_state(
    tensors: dict[str, np.ndarray], config: VAEConfig
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``{adam.exp_avg.*, adam.exp_avg_sq.*}`` -> (exp_avg, exp_avg_sq) keyed by parameter name."""
    missing = [n for n in optimizer_state_names(config) if n not in tensors]
    if missing:
        raise ConfigError(
            f"optimizer state lacks tensors {missing[:4]}{'...' if len(missing) > 4 else ''}"
        )
    names = [s.name for s in param_spec(config)]
    return (
        {n: tensors[EXP_AVG + n] for n in names},
        {n: tensors[EXP_AVG_SQ + n] for n in names},
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit integer seed for ``(seed, epoch)``, for generators that take one integer."""
    return int(
        np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )
