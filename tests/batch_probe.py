"""A model whose training loss reveals the batch it was given (shared by the reference tests).

All weights are zero except the decoder's output bias b, so z has no effect, the KL is 0 and the
loss of a batch x (B, D) is ``sum_d softplus(b_d) - (1/B) sum_{i,d} x_id b_d``. With b = 1 on
group A's pixels (the first 32 of 64) and 1024 on group B's (more than the 512 ones group A can
hold in a batch of 16), ``B * (sum softplus(b) - loss)`` is ``count_A + 1024 count_B``. A learning
rate of 1e-9 keeps the drift of the bias over a few dozen steps far below one count.
"""

from __future__ import annotations

import numpy as np

from vae_common.config import VAEConfig
from vae_common.spec import init_canonical

PROBE = VAEConfig(input_shape=(1, 8, 8), hidden=(4,), latent_dim=2)
PROBE_BATCH = 16
P_A, P_B = 0.3, 0.8
GROUP_A = np.arange(64) < 32
PIXELS_PER_GROUP = 32


def probe_state() -> dict[str, np.ndarray]:
    state = {n: np.zeros_like(p) for n, p in init_canonical(PROBE, 0, "float64").items()}
    state["decoder.out.bias"] = np.where(GROUP_A, 1.0, 1024.0)
    return state


def probe_images(n: int) -> np.ndarray:
    """``n`` identical images (n, 1, 8, 8): intensity P_A on group A, P_B on group B."""
    image = np.where(GROUP_A, P_A, P_B).reshape(1, 8, 8)
    return np.broadcast_to(image, (n, 1, 8, 8)).copy()


def counts_from_losses(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ones among group A, ones among group B) in each step's batch, from the step's loss."""
    bias = probe_state()["decoder.out.bias"]
    total = PROBE_BATCH * (np.sum(np.logaddexp(0.0, bias)) - np.asarray(losses, np.float64))
    assert np.all(np.abs(total - np.round(total)) < 1e-3), f"not a count: {total}"
    total = np.round(total).astype(np.int64)
    return total % 1024, total // 1024


def grey_loss() -> float:
    """The probe's loss on the grey (not binarized) images: every batch gives this one."""
    bias = probe_state()["decoder.out.bias"]
    return float(np.sum(np.logaddexp(0.0, bias)) - np.sum(np.where(GROUP_A, P_A, P_B) * bias))


def within_5_sigma(ones: int, draws: int, p: float) -> bool:
    """``ones`` of ``draws`` Bernoulli(p) draws is within 5 binomial standard errors of p."""
    return abs(ones / draws - p) < 5 * np.sqrt(p * (1 - p) / draws)
