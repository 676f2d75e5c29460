"""The main job (``make demo``): train the MLP VAE on the bundled digits in both backends from the
same initial weights, evaluate each checkpoint in both backends, run the parity checks and write
``report.md`` with tables and plots."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.data import load_digits
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_tools import parity, plots, run
from vae_tools.trajectory import check_trajectory

CONFIG = VAEConfig(input_shape=(1, 8, 8), hidden=(256,), latent_dim=8)
TRAIN = TrainConfig(lr=1e-3)
BATCH_SIZE = 64
IWAE_K = 200


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_demo(
    out: str | Path = "runs/demo", epochs: int = 30, seed: int = 0, progress: bool = True
) -> Path:
    """Run the whole demo into ``out`` (its ``jax/`` and ``torch/`` runs are replaced)."""
    from vae_jax.device import enable_float64

    # Float64 parity needs x64 before any JAX array exists. Float32 training passes its dtype
    # explicitly, but optax computes Adam's bias correction in the widest enabled float, so its
    # last bits differ from a run with x64 off (well inside the float32 tolerance).
    enable_float64()
    out = Path(out)
    started = time.perf_counter()
    ds = load_digits()
    init = init_canonical(CONFIG, seed, "float32")
    settings = run.RunSettings("digits", BATCH_SIZE, seed, "float32")
    metrics, times = {}, {}
    for backend in run.BACKENDS:
        shutil.rmtree(out / backend, ignore_errors=True)
        t0 = time.perf_counter()
        metrics[backend] = run.train(
            out / backend,
            backend,
            CONFIG,
            TRAIN,
            settings,
            epochs,
            init_state=init,
            dataset=ds,
            progress=progress,
            # The report compares the two backends' test curves epoch by epoch.
            test_every_epoch=True,
        )
        times[backend] = time.perf_counter() - t0

    cross = {}
    for trained in run.BACKENDS:
        for evaluator in run.BACKENDS:
            cross[trained, evaluator] = run.evaluate_checkpoint(
                out / trained / "checkpoint.safetensors",
                evaluator,
                "digits",
                seed=seed,
                iwae_k=IWAE_K,
                data=ds,
            )

    one_step = parity.check_parity(
        parity.make_inputs(CONFIG, seed=seed, batch_size=128, x=ds.train[:128].astype(np.float64)),
        "float64",
    )
    trajectory = check_trajectory(CONFIG, steps=100, dtype="float64", seed=seed)

    trainers = {}
    for backend in run.BACKENDS:
        t = run.make_trainer(backend, CONFIG, TRAIN, "float32")
        from vae_common.checkpoint import load_checkpoint

        t.load_state_dict(load_checkpoint(out / backend / "checkpoint.safetensors")[0])
        trainers[backend] = t
    z = np.random.default_rng([seed, 5]).standard_normal((32, CONFIG.latent_dim))
    x = ds.test[:16]
    images = np.concatenate([x] + [trainers[b].reconstruct(x) for b in run.BACKENDS])
    plots.save_samples(
        out / "reconstructions.png",
        images,
        ncols=16,
        title="inputs / jax reconstructions / torch reconstructions",
    )
    samples = np.concatenate([trainers[b].sample(z) for b in run.BACKENDS])
    plots.save_samples(
        out / "samples.png",
        samples,
        ncols=16,
        title="prior samples, same z: jax (top two rows) / torch (bottom two)",
    )
    plots.save_loss_curves(
        out / "loss_curves.png",
        {b: [v for m in metrics[b] for v in m["train_losses"]] for b in run.BACKENDS},
        {
            b: ([m["step"] for m in metrics[b]], [m["test_neg_elbo"] for m in metrics[b]])
            for b in run.BACKENDS
        },
    )
    total = time.perf_counter() - started
    report = out / "report.md"
    report.write_text(_report(epochs, metrics, times, cross, one_step, trajectory, total))
    return report


def _report(
    epochs: int,
    metrics: Mapping[str, list[dict[str, Any]]],
    times: Mapping[str, float],
    cross: Mapping[tuple[str, str], Mapping[str, float]],
    one_step: Mapping[str, Any],
    trajectory: Mapping[str, Any],
    total: float,
) -> str:
    c = CONFIG
    train_rows = [
        [
            b,
            f"{metrics[b][-1]['train_loss']:.3f}",
            f"{metrics[b][-1]['test_neg_elbo']:.3f}",
            f"{metrics[b][-1]['test_reconstruction']:.3f}",
            f"{metrics[b][-1]['test_kl']:.3f}",
            f"{np.median([m['seconds'] for m in metrics[b][1:]] or [metrics[b][0]['seconds']]):.3f}",
            f"{times[b]:.1f}",
        ]
        for b in run.BACKENDS
    ]
    cross_rows = []
    for trained in run.BACKENDS:
        a, b = cross[trained, "jax"], cross[trained, "torch"]
        rel = abs(a["neg_elbo"] - b["neg_elbo"]) / abs(b["neg_elbo"])
        cross_rows.append(
            [
                trained,
                f"{a['neg_elbo']:.5f}",
                f"{b['neg_elbo']:.5f}",
                f"{rel:.1e}",
                f"{a['neg_iwae']:.4f}",
                f"{b['neg_iwae']:.4f}",
            ]
        )
    worst_grad = max(g["max_rel_diff"] for g in one_step["grads"].values())
    worst_param = max(p["max_rel_diff"] for p in trajectory["params"].values())
    return f"""# Demo: the same VAE trained in JAX and in PyTorch

Data: scikit-learn's bundled digits (1500 train / 297 test images, 8x8, scaled to [0, 1]).
Model: MLP {c.input_dim}-{"-".join(map(str, c.hidden))}-{c.latent_dim}, Bernoulli likelihood.
Training: Adam lr {TRAIN.lr}, batch {BATCH_SIZE}, {epochs} epochs, float32, both backends from the
same initial weights and the same batch order; each backend draws its own noise.
All figures are nats per example; -ELBO sums over the 64 pixels and the latent dimensions.
Total demo time: {total:.0f} s.

## Training

{_table(["backend", "final train loss", "test -ELBO", "reconstruction", "KL", "s/epoch (median)", "total s"], train_rows)}

![loss curves](loss_curves.png)

## Each checkpoint evaluated by both backends

Test -ELBO with shared evaluation noise (seed 0), and the IWAE estimate of -log p(x) with
k = {IWAE_K} (tighter than the ELBO when it is lower).

{_table(["trained in", "-ELBO (jax eval)", "-ELBO (torch eval)", "rel. diff", f"IWAE k={IWAE_K} (jax)", f"IWAE k={IWAE_K} (torch)"], cross_rows)}

## Parity (float64, shared weights and noise)

| check | result | tolerance | passed |
|---|---|---|---|
| one step: loss rel. diff | {one_step["loss"]["rel_diff"]:.1e} | {one_step["tolerance"]:.0e} | {one_step["passed"]} |
| one step: worst gradient rel. diff ({len(one_step["grads"])} tensors) | {worst_grad:.1e} | {one_step["tolerance"]:.0e} | {one_step["passed"]} |
| 100 Adam steps: worst parameter rel. diff | {worst_param:.1e} | {trajectory["tolerance"]:.0e} | {trajectory["passed"]} |
| 100 Adam steps: worst per-step loss rel. diff | {trajectory["loss_curve"]["max_rel_diff"]:.1e} | {trajectory["tolerance"]:.0e} | {trajectory["passed"]} |

## Reconstructions and samples

![reconstructions](reconstructions.png)

![samples](samples.png)
"""
