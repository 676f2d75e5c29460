"""Training-trajectory parity: N Adam steps in each backend from the same weights, batches and
noise, then every parameter, the loss curve and a final gradient compared by name."""

from __future__ import annotations

import numpy as np

from vae_common.compare import TOLERANCES, TRAJECTORY_TOLERANCES, max_abs_diff, rel_diff
from vae_common.config import VAEConfig
from vae_common.errors import UsageError
from vae_common.spec import init_canonical
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig
from vae_tools import parity


def _trainers(
    config: VAEConfig, train: TrainConfig, dtype: str, device: str | None
) -> tuple[TrainerBase, TrainerBase]:
    from vae_jax.device import enable_float64

    if dtype == "float64":
        enable_float64()
    import torch

    import vae_jax.train
    import vae_torch.train

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return (
        vae_jax.train.Trainer(config, train, dtype),
        vae_torch.train.Trainer(config, train, dtype, device=device),
    )


def check_trajectory(
    config: VAEConfig,
    steps: int = 100,
    dtype: str = "float64",
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    beta: float = 1.0,
    state: dict | None = None,
    device: str | None = "cpu",
) -> dict:
    """Train ``steps`` Adam steps in both backends and compare.

    Returns the parity report form (``dtype``, ``loss``, ``grads``, ``max_rel_diff``,
    ``tolerance``, ``passed``) plus ``steps``, ``params`` (final weights by name) and
    ``loss_curve`` (the largest relative difference over the per-step losses). ``loss`` is the
    last step's loss; ``grads`` is the gradient of a fresh shared batch at each backend's final
    weights.
    """
    import jax

    if steps < 1:
        raise UsageError(f"steps must be positive, got {steps}")
    rng = np.random.default_rng([seed, 2])
    state = init_canonical(config, seed) if state is None else state
    xs = rng.random((steps, batch_size) + config.input_shape)
    eps = rng.standard_normal((steps, batch_size, config.latent_dim))
    train = TrainConfig(lr=lr, beta=beta)
    jt, tt = _trainers(config, train, dtype, device)
    with jax.default_matmul_precision("highest"):
        jt.load_state_dict(state)
        tt.load_state_dict(state)
        j_losses = jt.run_steps(xs, eps)
        t_losses = tt.run_steps(xs, eps)
        j_state, t_state = jt.state_dict(), tt.state_dict()
        final = parity.make_inputs(config, seed=seed + 1, batch_size=batch_size, beta=beta)
        j_out = parity.jax_side(parity.ParityInputs(**{**final.__dict__, "state": j_state}), dtype)
    t_out = parity.torch_side(
        parity.ParityInputs(**{**final.__dict__, "state": t_state}), dtype, device
    )
    report = parity.compare(
        j_out, t_out, dtype, TRAJECTORY_TOLERANCES.get(dtype, TOLERANCES[dtype])
    )
    report["loss"] = {
        "jax": float(j_losses[-1]),
        "torch": float(t_losses[-1]),
        "rel_diff": rel_diff(j_losses[-1], t_losses[-1]),
    }
    report["loss_curve"] = {
        "jax": [float(v) for v in j_losses],
        "torch": [float(v) for v in t_losses],
        "max_rel_diff": max(rel_diff(a, b) for a, b in zip(j_losses, t_losses, strict=True)),
    }
    report["params"] = {
        n: {
            "max_abs_diff": max_abs_diff(j_state[n], t_state[n]),
            "max_rel_diff": rel_diff(j_state[n], t_state[n]),
        }
        for n in t_state
    }
    report["steps"] = steps
    curve = [report["loss"]["rel_diff"], report["loss_curve"]["max_rel_diff"]]
    worst = max(
        curve + [report["max_rel_diff"]] + [p["max_rel_diff"] for p in report["params"].values()]
    )
    report["max_rel_diff"] = worst
    if dtype in TRAJECTORY_TOLERANCES:
        report["judged"] = "params, loss curve, final gradient"
        report["passed"] = bool(worst <= report["tolerance"])
    else:
        report["judged"] = "loss curve (see vae_common.compare.TRAJECTORY_TOLERANCES)"
        report["passed"] = bool(max(curve) <= report["tolerance"])
    return report
