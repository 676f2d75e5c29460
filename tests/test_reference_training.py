"""Both trainers against a numpy reference: the objective's gradient and Adam, step by step.

Parity tests compare JAX with torch, so a mistake written into both (a learning rate, the KL
warm-up, the free-bits reduction, the noise or the binarization an epoch draws) passes them. Here
each ``Trainer`` meets ``vae_common.reference``: the MLP's forward and backward pass and Adam
written out in numpy (float64), checked first against a finite-difference gradient. The
epochs' noise is replayed from the documented streams (torch: one generator seeded by
``epoch_seed(seed, epoch)``, per step a Bernoulli draw of the batch if dynamic, then the noise;
JAX: ``fold_in(fold_in(key(seed), epoch), i)`` split into a binarization and a noise key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from batch_probe import (
    P_A,
    P_B,
    PIXELS_PER_GROUP,
    PROBE,
    PROBE_BATCH,
    counts_from_losses,
    grey_loss,
    probe_images,
    probe_state,
    within_5_sigma,
)

import vae_jax.train
import vae_torch.train
from vae_common import reference
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical
from vae_common.training import EXP_AVG, EXP_AVG_SQ, TrainConfig, epoch_seed

torch.set_num_threads(1)

CONFIG = VAEConfig(input_shape=(1, 4, 4), hidden=(6,), latent_dim=3)
BATCH, N, SEED = 8, 24, 5
TRAINERS = {"jax": vae_jax.train.Trainer, "torch": vae_torch.train.Trainer}
# Float64 throughout: numpy and each backend differ by rounding only (~1e-15 per operation).
RTOL, ATOL = 1e-9, 1e-12

SETTINGS = {
    "constant-lr": TrainConfig(lr=0.01),
    # Adam's settings all away from their defaults (an epsilon that matters next to sqrt(v)),
    # a KL weight other than 1 and a 5-step warm-up running across run_steps and the first epoch.
    "warmup": TrainConfig(lr=0.02, b1=0.8, b2=0.95, adam_eps=1e-3, beta=0.7, warmup_steps=5),
    # A floor between the dimensions' KLs (some floored, some not; checked below), dynamic
    # binarization in the epochs.
    "free-bits": TrainConfig(lr=0.01, beta=1.3, free_bits=0.05, binarize="dynamic"),
}


def make_trainer(backend: str, train: TrainConfig, config: VAEConfig = CONFIG):
    device = "cpu" if backend == "torch" else None
    return TRAINERS[backend](config, train, dtype="float64", device=device)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(11)
    data = rng.uniform(0.0, 1.0, (N, 1, 4, 4))
    xs = rng.uniform(0.0, 1.0, (3, BATCH, 1, 4, 4))
    eps = rng.standard_normal((3, BATCH, CONFIG.latent_dim))
    epochs = {e: rng.permutation(N).reshape(N // BATCH, BATCH) for e in (1, 2)}
    return init_canonical(CONFIG, 3, "float64"), data, xs, eps, epochs


def torch_epoch_inputs(data, batches, seed, epoch, dynamic):
    """The batches and noise ``vae_torch.train.Trainer.train_epoch`` documents drawing."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    xs, eps = [], []
    for idx in batches:
        x = torch.as_tensor(data[idx])
        if dynamic:
            x = torch.bernoulli(x, generator=gen)
        xs.append(x.numpy())
        e = torch.randn((len(idx), CONFIG.latent_dim), generator=gen, dtype=torch.float64)
        eps.append(e.numpy())
    return np.stack(xs), np.stack(eps)


def jax_epoch_inputs(data, batches, seed, epoch, dynamic):
    """The batches and noise ``vae_jax.train.Trainer.train_epoch`` documents drawing."""
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    xs, eps = [], []
    for i, idx in enumerate(batches):
        k_bin, k_eps = jax.random.split(jax.random.fold_in(key, i))
        x = jnp.asarray(data[idx])
        if dynamic:
            x = jax.random.bernoulli(k_bin, x).astype(jnp.float64)
        xs.append(np.asarray(x))
        eps.append(np.asarray(jax.random.normal(k_eps, (len(idx), CONFIG.latent_dim), jnp.float64)))
    return np.stack(xs), np.stack(eps)


EPOCH_INPUTS = {"jax": jax_epoch_inputs, "torch": torch_epoch_inputs}


def _objective(state, x, eps, beta, free_bits):
    return reference.mlp_objective_and_grads(state, CONFIG, x, eps, beta, free_bits)[0]


@pytest.mark.parametrize("free_bits", [0.0, 0.02])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_reference_gradient_matches_finite_differences(problem, likelihood, free_bits):
    state, _, xs, eps, _ = problem
    config = CONFIG.replace(likelihood=likelihood, gaussian_std=0.7)
    value, grads = reference.mlp_objective_and_grads(state, config, xs[0], eps[0], 1.3, free_bits)
    # The value is the one of the existing numpy forward pass (the per-example terms).
    recon, kl = reference.negative_elbo_terms(state, config, xs[0], eps[0])
    if free_bits == 0:
        assert value == pytest.approx(np.mean(recon) + 1.3 * np.mean(kl), rel=1e-13)
    rng = np.random.default_rng(0)
    h = 1e-6
    for name in state:
        direction = {n: np.zeros_like(p) for n, p in state.items()}
        direction[name] = rng.standard_normal(state[name].shape)

        def at(t, direction=direction):
            moved = {n: state[n] + t * direction[n] for n in state}
            return reference.mlp_objective_and_grads(moved, config, xs[0], eps[0], 1.3, free_bits)[
                0
            ]

        numeric = (at(h) - at(-h)) / (2 * h)
        analytic = float(np.sum(grads[name] * direction[name]))
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8), name


def test_free_bits_floor_is_active_on_some_dimensions_only(problem):
    """The free-bits setting above is a real test: it floors some dimensions and not others."""
    state, _, xs, eps, _ = problem
    _, mean, logvar = reference.mlp_forward(state, CONFIG, xs[0], eps[0])
    per_dim = np.mean(0.5 * (mean**2 + np.exp(logvar) - 1 - logvar), axis=0)
    floor = SETTINGS["free-bits"].free_bits
    assert np.any(per_dim < floor) and np.any(per_dim > floor), per_dim


def test_adam_update_known_values():
    """The first step moves every weight by lr * g / (|g| + eps) (bias correction cancels b1
    and b2), the second by lr * m_hat / (sqrt(v_hat) + eps) computed here by hand."""
    p, g1, g2 = (
        {"w": np.array([1.0, -2.0])},
        {"w": np.array([0.5, -4.0])},
        {"w": np.array([1.0, 2.0])},
    )
    zero = ({"w": np.zeros(2)}, {"w": np.zeros(2)})
    p1, moments = reference.adam_update(p, g1, zero, 1, lr=0.1, b1=0.9, b2=0.99, eps=1e-3)
    np.testing.assert_allclose(p1["w"], [1.0 - 0.1 * 0.5 / 0.501, -2.0 + 0.1 * 4.0 / 4.001])
    p2, _ = reference.adam_update(p1, g2, moments, 2, lr=0.1, b1=0.9, b2=0.99, eps=1e-3)
    m = 0.9 * 0.1 * g1["w"] + 0.1 * g2["w"]
    v = 0.99 * 0.01 * g1["w"] ** 2 + 0.01 * g2["w"] ** 2
    want = p1["w"] - 0.1 * (m / (1 - 0.81)) / (np.sqrt(v / (1 - 0.99**2)) + 1e-3)
    np.testing.assert_allclose(p2["w"], want, rtol=1e-14)


def test_kl_weight_schedule():
    assert [reference.kl_weight(0.5, 4, t) for t in range(6)] == [0, 0.125, 0.25, 0.375, 0.5, 0.5]
    assert reference.kl_weight(0.7, 0, 0) == 0.7


def assert_close(got, want, what):
    for name in want:
        np.testing.assert_allclose(
            got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{what} {name}"
        )


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("backend", list(TRAINERS))
def test_trainer_follows_the_numpy_reference(backend, setting, problem):
    """``run_steps`` (3 steps), then two ``train_epoch``s (3 steps each, warm-up and step count
    carried across the calls): losses, weights and Adam's moments as the numpy reference's."""
    state, data, xs, eps, epochs = problem
    train = SETTINGS[setting]
    trainer = make_trainer(backend, train)
    trainer.load_state_dict(state)
    want_state, moments, want_losses = reference.mlp_train_steps(state, CONFIG, train, xs, eps)
    np.testing.assert_allclose(trainer.run_steps(xs, eps), want_losses, rtol=RTOL)
    resident = trainer.put_data(data)
    step = len(xs)
    for epoch, batches in epochs.items():
        bx, be = EPOCH_INPUTS[backend](data, batches, SEED, epoch, train.binarize == "dynamic")
        want_state, moments, want_losses = reference.mlp_train_steps(
            want_state, CONFIG, train, bx, be, moments, first_step=step
        )
        got = trainer.train_epoch(resident, batches, SEED, epoch)
        np.testing.assert_allclose(got, want_losses, rtol=RTOL, err_msg=f"epoch {epoch} losses")
        step += len(batches)
    assert trainer.step == step
    assert_close(trainer.state_dict(), want_state, "weights")
    opt = trainer.optimizer_state_dict()
    assert_close({n: opt[EXP_AVG + n] for n in state}, moments[0], "exp_avg")
    assert_close({n: opt[EXP_AVG_SQ + n] for n in state}, moments[1], "exp_avg_sq")


@pytest.mark.parametrize("backend", list(TRAINERS))
def test_dynamic_binarization_draws_bernoulli_per_step_and_epoch(backend):
    """Pixels of intensity 0.3 and 0.8 are 1 with those frequencies (5 sigma of the binomial,
    6144 draws each) in the batches the trainer really trained on, freshly drawn every step and
    every epoch; a threshold, or one draw reused, fails."""
    trainer = make_trainer(backend, TrainConfig(lr=1e-9, binarize="dynamic"), PROBE)
    trainer.load_state_dict(probe_state())
    data = trainer.put_data(probe_images(64))
    batches = np.arange(64).reshape(-1, PROBE_BATCH)
    per_epoch = []
    for epoch in (1, 2, 3):
        per_epoch.append(counts_from_losses(trainer.train_epoch(data, batches, SEED, epoch)))
    a = np.concatenate([c[0] for c in per_epoch])
    b = np.concatenate([c[1] for c in per_epoch])
    draws = len(a) * PROBE_BATCH * PIXELS_PER_GROUP
    assert within_5_sigma(int(a.sum()), draws, P_A), a.sum() / draws
    assert within_5_sigma(int(b.sum()), draws, P_B), b.sum() / draws
    # The same images in every step: only a fresh draw makes the counts differ.
    assert len(set(a.tolist())) > 1 and len(set(b.tolist())) > 1
    assert not np.array_equal(per_epoch[0][0], per_epoch[1][0])
    # Without binarization the loss sees the grey levels themselves: 0.3 and 0.8 per pixel.
    plain = make_trainer(backend, TrainConfig(lr=1e-9), PROBE)
    plain.load_state_dict(probe_state())
    losses = plain.train_epoch(plain.put_data(probe_images(64)), batches, SEED, 1)
    np.testing.assert_allclose(losses, grey_loss(), rtol=1e-9)
