"""The two ``Trainer``s behave alike: epochs, resume, optimizer state by name, evaluation, sampling.

Every behaviour is checked in both backends on a small MLP (8x8 digits, 64-32-2). Training is in
float32 (the default) unless a test says otherwise; the torch side runs on the CPU with one thread
(the machine's other jobs make two OpenMP threads ten times slower) so results are reproducible.
Cross-backend numbers are judged against ``vae_common.compare`` only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest

import vae_jax.train
import vae_torch.train
from vae_common.checkpoint import CheckpointError
from vae_common.compare import TOLERANCES, TRAJECTORY_TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.data import Dataset, batch_indices, load_digits
from vae_common.spec import init_canonical, param_spec
from vae_common.training import TrainConfig, optimizer_state_names

CONFIG = VAEConfig(input_shape=(1, 8, 8), hidden=(32,), latent_dim=2)
TRAIN = TrainConfig(lr=3e-3)
BATCH = 64
SEED = 0
BACKENDS = ("jax", "torch")
TRAINERS = {"jax": vae_jax.train.Trainer, "torch": vae_torch.train.Trainer}


def make_trainer(
    backend: str, train: TrainConfig = TRAIN, dtype: str = "float32", config: VAEConfig = CONFIG
):
    device = "cpu" if backend == "torch" else None
    return TRAINERS[backend](config, train, dtype=dtype, device=device)


def batches(n: int, epoch: int) -> np.ndarray:
    return batch_indices(n, BATCH, SEED, epoch)


@dataclass
class ThreeEpochs:
    """A trainer after three uninterrupted epochs, and what it held after the second."""

    trainer: object
    losses: list[np.ndarray]  # per epoch, each (S,)
    params_after_2: dict[str, np.ndarray]  # deep copies of what state_dict() returned
    optimizer_after_2: dict[str, np.ndarray]
    step_after_2: int
    returned_after_2: tuple[dict, dict]  # what state_dict(), optimizer_state_dict() returned


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def init_state() -> dict[str, np.ndarray]:
    return init_canonical(CONFIG, SEED, "float32")


@pytest.fixture(scope="module")
def trained(digits, init_state):
    """``trained(backend)``: three epochs from ``init_state``, trained once per module."""
    cache: dict[str, ThreeEpochs] = {}

    def get(backend: str) -> ThreeEpochs:
        if backend not in cache:
            trainer = make_trainer(backend)
            trainer.load_state_dict(init_state)
            data = trainer.put_data(digits.train)
            losses, snapshot = [], None
            for epoch in (1, 2, 3):
                losses.append(
                    trainer.train_epoch(data, batches(len(digits.train), epoch), SEED, epoch)
                )
                if epoch == 2:
                    returned = (trainer.state_dict(), trainer.optimizer_state_dict())
                    snapshot = (*copy.deepcopy(returned), trainer.step, returned)
            cache[backend] = ThreeEpochs(trainer, losses, *snapshot)
        return cache[backend]

    return get


def assert_states_equal(got: dict, want: dict, what: str) -> None:
    assert list(got) == list(want), f"{what}: tensor names differ"
    unequal = [name for name in want if not np.array_equal(got[name], want[name])]
    assert not unequal, f"{what}: not bit-identical: {unequal}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_epoch_returns_finite_losses_that_decrease(backend, trained, digits):
    run = trained(backend)
    steps = len(digits.train) // BATCH
    for losses in run.losses:
        assert losses.shape == (steps,)
        assert losses.dtype == np.float32
        assert np.all(np.isfinite(losses))
    assert run.trainer.step == 3 * steps
    means = [float(np.mean(losses)) for losses in run.losses]
    assert means[0] > means[1] > means[2], f"{backend} epoch mean losses {means} do not decrease"


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_from_saved_state_is_bit_identical(backend, trained, digits):
    run = trained(backend)
    fresh = make_trainer(backend)
    fresh.load_state_dict(run.params_after_2)
    fresh.load_optimizer_state_dict(run.optimizer_after_2, run.step_after_2)
    assert fresh.step == run.step_after_2
    losses = fresh.train_epoch(fresh.put_data(digits.train), batches(len(digits.train), 3), SEED, 3)
    np.testing.assert_array_equal(losses, run.losses[2])
    assert fresh.step == run.trainer.step
    assert_states_equal(fresh.state_dict(), run.trainer.state_dict(), f"{backend} weights")
    assert_states_equal(
        fresh.optimizer_state_dict(), run.trainer.optimizer_state_dict(), f"{backend} Adam moments"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dicts_are_snapshots(backend, trained):
    # Resuming relies on a saved state not changing when training goes on (JAX donates buffers):
    # what the trainer returned after epoch 2 must still hold the epoch-2 values after epoch 3.
    run = trained(backend)
    params, moments = run.returned_after_2
    assert_states_equal(params, run.params_after_2, f"{backend} state_dict() after more training")
    assert_states_equal(
        moments, run.optimizer_after_2, f"{backend} optimizer_state_dict() after more training"
    )
    later = run.trainer.state_dict()
    assert all(not np.array_equal(later[n], params[n]) for n in params), "epoch 3 changed nothing"


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_state_uses_canonical_names_and_round_trips(backend, trained):
    run = trained(backend)
    moments = run.optimizer_after_2
    assert list(moments) == optimizer_state_names(CONFIG)
    shapes = {s.name: s.shape for s in param_spec(CONFIG)}
    for name, value in moments.items():
        assert value.shape == shapes[name.split(".", 2)[2]], name
        assert value.dtype == np.float32, name
    squares = [v for n, v in moments.items() if n.startswith("adam.exp_avg_sq.")]
    assert all(np.all(v >= 0) and np.any(v > 0) for v in squares)

    fresh = make_trainer(backend)
    fresh.load_state_dict(run.params_after_2)
    assert all(not np.any(v) for v in fresh.optimizer_state_dict().values()), "fresh Adam not zero"
    fresh.load_optimizer_state_dict(moments, run.step_after_2)
    assert_states_equal(fresh.optimizer_state_dict(), moments, f"{backend} Adam moments round trip")
    assert fresh.step == run.step_after_2


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_state_missing_a_tensor_is_refused_by_name(backend, trained):
    run = trained(backend)
    moments = dict(run.optimizer_after_2)
    del moments["adam.exp_avg_sq.encoder.mean.bias"]
    fresh = make_trainer(backend)
    fresh.load_state_dict(run.params_after_2)
    with pytest.raises(CheckpointError, match=r"adam\.exp_avg_sq\.encoder\.mean\.bias"):
        fresh.load_optimizer_state_dict(moments, run.step_after_2)


@pytest.mark.parametrize("source, target", [("jax", "torch"), ("torch", "jax")])
def test_optimizer_state_loads_into_the_other_backend(source, target, trained):
    run = trained(source)
    other = make_trainer(target)
    other.load_state_dict(run.params_after_2)
    other.load_optimizer_state_dict(run.optimizer_after_2, run.step_after_2)
    assert other.step == run.step_after_2
    assert_states_equal(other.state_dict(), run.params_after_2, f"{source} weights in {target}")
    assert_states_equal(
        other.optimizer_state_dict(), run.optimizer_after_2, f"{source} Adam moments in {target}"
    )


def test_training_continues_identically_in_the_other_backend_float64():
    # Three Adam steps in one backend, its weights, moments and step count handed to the other,
    # three more steps there: the result must match three more steps in the first backend, to the
    # trajectory tolerance. The KL warm-up and free bits make the step count part of the maths.
    tol = TRAJECTORY_TOLERANCES["float64"]
    train = TrainConfig(lr=1e-2, beta=2.0, warmup_steps=5, free_bits=0.05)
    rng = np.random.default_rng([SEED, 11])
    xs = rng.random((6, 16) + CONFIG.input_shape)
    eps = rng.standard_normal((6, 16, CONFIG.latent_dim))
    init = init_canonical(CONFIG, SEED + 1)
    first, rest = slice(0, 3), slice(3, 6)

    jax_t = make_trainer("jax", train, "float64")
    torch_t = make_trainer("torch", train, "float64")
    handed = {}
    finals = {}
    for name, trainer in (("jax", jax_t), ("torch", torch_t)):
        trainer.load_state_dict(init)
        trainer.run_steps(xs[first], eps[first])
        handed[name] = (trainer.state_dict(), trainer.optimizer_state_dict(), trainer.step)
        finals[name] = (trainer.run_steps(xs[rest], eps[rest]), trainer.state_dict())
    assert handed["jax"][2] == handed["torch"][2] == 3

    # jax -> a fresh torch trainer; torch -> the JAX trainer (reusing its compiled steps).
    crossed = {}
    for source, trainer in (("jax", make_trainer("torch", train, "float64")), ("torch", jax_t)):
        params, moments, step = handed[source]
        trainer.load_state_dict(params)
        trainer.load_optimizer_state_dict(moments, step)
        crossed[source] = (trainer.run_steps(xs[rest], eps[rest]), trainer.state_dict())

    for source in BACKENDS:
        (losses, state), (want_losses, want_state) = crossed[source], finals[source]
        worst = {n: rel_diff(state[n], want_state[n]) for n in want_state}
        worst["losses"] = max(rel_diff(a, b) for a, b in zip(losses, want_losses, strict=True))
        bad = {n: d for n, d in worst.items() if not d <= tol}
        assert not bad, f"continued from {source}'s state in the other backend: {bad} > {tol:g}"

    # Control: without the moments and step, the continuation is measurably different.
    control = make_trainer("torch", train, "float64")
    control.load_state_dict(handed["jax"][0])
    control.run_steps(xs[rest], eps[rest])
    control_state = control.state_dict()
    assert max(rel_diff(control_state[n], finals["jax"][1][n]) for n in control_state) > 1e3 * tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_binarization_is_drawn_per_step_and_reproducible(
    backend, trained, digits, init_state
):
    trainer = make_trainer(backend, TrainConfig(lr=TRAIN.lr, binarize="dynamic"))
    data = trainer.put_data(digits.train)
    runs = []
    for _ in range(2):
        trainer.load_state_dict(init_state)
        runs.append(trainer.train_epoch(data, batches(len(digits.train), 1), SEED, 1))
    assert np.all(np.isfinite(runs[0]))
    np.testing.assert_array_equal(runs[0], runs[1])
    # Same weights, batches and seed as the non-binarized run: only the binarization differs.
    plain = trained(backend).losses[0]
    assert runs[0].shape == plain.shape
    assert abs(float(runs[0][0]) - float(plain[0])) > 1e-3 * abs(float(plain[0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reconstruct_sample_and_encode_mean_shapes(backend, trained, digits):
    trainer = trained(backend).trainer
    x = digits.test[:5]
    recon = trainer.reconstruct(x)
    assert recon.shape == (5, 1, 8, 8)
    assert np.all((recon >= 0) & (recon <= 1))
    z = np.random.default_rng(0).standard_normal((7, CONFIG.latent_dim))
    samples = trainer.sample(z)
    assert samples.shape == (7, 1, 8, 8)
    assert np.all((samples >= 0) & (samples <= 1))
    means = trainer.encode_mean(x)
    assert means.shape == (5, CONFIG.latent_dim)
    assert np.all(np.isfinite(means))
    assert not np.allclose(recon[0], recon[1]), "different inputs, identical reconstructions"


def evaluate_in_both(
    state: dict, x: np.ndarray, dtype: str, iwae_k: int, trainers: dict | None = None
) -> dict[str, dict]:
    """Evaluate ``state`` with each backend (``trainers[backend]`` if given, already holding it)."""
    out = {}
    for backend in BACKENDS:
        trainer = (trainers or {}).get(backend)
        if trainer is None:
            trainer = make_trainer(backend, dtype=dtype)
            trainer.load_state_dict(state)
        out[backend] = trainer.evaluate(x, seed=3, iwae_k=iwae_k)
    return out


def assert_evaluations_agree(results: dict[str, dict], tol: float) -> None:
    j, t = results["jax"], results["torch"]
    assert set(j) == set(t) == {"neg_elbo", "reconstruction", "kl", "neg_iwae", "iwae_k", "n"}
    diffs = {k: rel_diff(j[k], t[k]) for k in ("neg_elbo", "reconstruction", "kl", "neg_iwae")}
    bad = {k: d for k, d in diffs.items() if not d <= tol}
    assert not bad, f"evaluations differ: {bad} > {tol:g} (jax {j}, torch {t})"
    assert j["n"] == t["n"] and j["iwae_k"] == t["iwae_k"]


@pytest.mark.parametrize("dtype, trained_in", [("float32", "jax"), ("float64", "torch")])
def test_evaluate_agrees_across_backends_and_iwae_is_tighter(dtype, trained_in, trained, digits):
    trainer = trained(trained_in).trainer
    # In float32 the trained trainer evaluates its own weights; the other backend loads them.
    own = {trained_in: trainer} if dtype == trainer.dtype else {}
    results = evaluate_in_both(trainer.state_dict(), digits.test, dtype, 100, own)
    assert_evaluations_agree(results, TOLERANCES[dtype])
    for backend, r in results.items():
        assert r["n"] == len(digits.test) and r["iwae_k"] == 100
        assert r["neg_elbo"] == pytest.approx(r["reconstruction"] + r["kl"], rel=1e-12)
        assert r["kl"] > 0
        # Both are negative bounds in nats: IWAE estimates -log p(x) and must be the lower one.
        assert r["neg_iwae"] < r["neg_elbo"], (
            f"{backend} {dtype}: IWAE {r['neg_iwae']} >= ELBO {r['neg_elbo']}"
        )


def test_evaluate_without_iwae_and_on_a_ragged_last_batch(trained, digits):
    state = trained("torch").trainer.state_dict()
    x = digits.test[:130]
    out = {}
    for backend in BACKENDS:
        trainer = make_trainer(backend)
        trainer.load_state_dict(state)
        out[backend] = trainer.evaluate(x, seed=1, batch_size=50, iwae_k=0)
        assert out[backend]["neg_iwae"] is None and out[backend]["n"] == 130
    tol = TOLERANCES["float32"]
    for key in ("neg_elbo", "reconstruction", "kl"):
        assert rel_diff(out["jax"][key], out["torch"][key]) <= tol, key


def test_trained_model_beats_its_initialisation(trained, digits, init_state):
    before = make_trainer("torch")
    before.load_state_dict(init_state)
    initial = before.evaluate(digits.test, seed=3)["neg_elbo"]
    for backend in BACKENDS:
        assert trained(backend).trainer.evaluate(digits.test, seed=3)["neg_elbo"] < initial - 5.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_or_malformed_batches_are_refused_by_name(backend, digits):
    trainer = make_trainer(backend)
    trainer.load_state_dict(init_canonical(CONFIG, SEED, "float32"))
    data = trainer.put_data(digits.train[:100])
    before = trainer.state_dict()
    bad = batches(100, 0)
    bad[0, 3] = 100
    with pytest.raises(ValueError, match=r"indices in \[0, 100\] but data has 100 samples"):
        trainer.train_epoch(data, bad, SEED, 0)
    with pytest.raises(ValueError, match=r"\(steps, batch\) integer array"):
        trainer.train_epoch(data, bad.astype(np.float32), SEED, 0)
    with pytest.raises(ValueError, match=r"\(steps, batch\) integer array"):
        trainer.train_epoch(data, bad[0], SEED, 0)
    assert trainer.step == 0
    for name, value in trainer.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
