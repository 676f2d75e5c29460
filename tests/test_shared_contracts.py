"""Contracts of the numpy code both trainers share (``vae_common.training``, ``evaluation``),
checked on their own: a change here moves both backends at once, so no parity test sees it.

Each test pins something a generic mutation run found unpinned: the documented defaults,
validation edges, the serialised form resumes compare, the evaluation's defaults and its IWAE
chunking, all against numpy (``vae_common.reference``) or the optimizers' own defaults.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import optax
import pytest
import torch

from vae_common import reference
from vae_common.config import VAEConfig
from vae_common.data import (
    batch_indices,
    check_batches,
    read_idx,
    standard_normal,
    validate_images,
)
from vae_common.errors import ConfigError, DataError, ShapeError
from vae_common.evaluation import evaluate_batches
from vae_common.spec import init_canonical
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig, optimizer_state_names, split_optimizer_state

CONFIG = VAEConfig(input_shape=(1, 2, 2), hidden=(3,), latent_dim=2)


def test_train_config_defaults_are_the_optimizers_and_the_plain_objective():
    """Adam's defaults are PyTorch's and optax's (as documented); the objective's switches are
    off: KL weight 1, no warm-up, no free bits, no binarization."""
    c = TrainConfig()
    torch_adam = inspect.signature(torch.optim.Adam).parameters
    optax_adam = inspect.signature(optax.adam).parameters
    assert (c.b1, c.b2) == torch_adam["betas"].default
    assert c.lr == torch_adam["lr"].default
    assert c.adam_eps == torch_adam["eps"].default == optax_adam["eps"].default
    assert (c.b1, c.b2) == (optax_adam["b1"].default, optax_adam["b2"].default)
    assert (c.beta, c.warmup_steps, c.free_bits, c.binarize) == (1.0, 0, 0.0, "none")


@pytest.mark.parametrize(
    "field, value",
    [("b1", 1.0), ("b2", 1.0), ("b1", -0.1), ("b2", -0.1), ("lr", 0.0), ("warmup_steps", -1)],
)
def test_train_config_refuses_each_bad_setting_alone(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_train_config_json_has_sorted_keys():
    """A resume compares the stored JSON text with a new one, and files already written have
    their keys sorted: the text must stay byte for byte what it was."""
    c = TrainConfig(lr=0.5, warmup_steps=3)
    assert c.to_json() == json.dumps(json.loads(c.to_json()), sort_keys=True)
    assert list(json.loads(c.to_json())) == sorted(json.loads(c.to_json()))
    assert TrainConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("missing, ellipsis", [(4, False), (5, True)])
def test_missing_optimizer_tensors_are_named_four_at_most(missing, ellipsis):
    names = optimizer_state_names(CONFIG)
    tensors = {n: np.zeros(1) for n in names[missing:]}
    with pytest.raises(ConfigError, match="lacks tensors") as info:
        split_optimizer_state(tensors, CONFIG)
    message = str(info.value)
    assert all(n in message for n in names[: min(missing, 4)])
    assert message.endswith("...") == ellipsis


# -- evaluate_batches against numpy, with numpy batch functions ----------------------------------


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return init_canonical(CONFIG, 1, "float64")


def _terms(state):
    def terms(x, eps):
        logits, mean, logvar = reference.mlp_forward(state, CONFIG, x, eps)
        recon = np.sum(np.logaddexp(0.0, logits) - x * logits, axis=(1, 2, 3))
        return recon, reference.gaussian_kl(mean, logvar)

    return terms


def _iwae(state):
    return lambda x, eps: reference.mlp_negative_iwae_bound(state, CONFIG, x, eps)


def test_evaluation_defaults(state):
    """Seed 0, batches of 500 (501 images: two batches, noise streams 0 and 2), no IWAE."""
    x = np.random.default_rng(0).uniform(0, 1, (501, 1, 2, 2))
    got = evaluate_batches(_terms(state), _iwae(state), x, 2, "float64")
    terms = _terms(state)
    r0, k0 = terms(x[:500], standard_normal(0, 0, (500, 2)))
    r1, k1 = terms(x[500:], standard_normal(0, 2, (1, 2)))
    recon, kl = np.concatenate([r0, r1]), np.concatenate([k0, k1])
    assert got["neg_elbo"] == pytest.approx(np.mean(recon + kl), rel=1e-12)
    assert got["neg_iwae"] is None and got["iwae_k"] == 0 and got["n"] == 501


@pytest.mark.parametrize("k", [16667, 25000, 30000])
def test_iwae_chunks_hold_at_most_50000_samples(state, k):
    """For large K the IWAE runs on chunks of ``max(1, min(batch_size, 50000 // K))`` examples,
    chunk j with noise ``standard_normal(seed, 2j + 1, (K, chunk, L))``: 2, 2 and 1 examples
    here (K = 16667, 25000, 30000), so a change of the constant or the rule changes the noise."""
    x = np.random.default_rng(1).uniform(0, 1, (3, 1, 2, 2))
    got = evaluate_batches(_terms(state), _iwae(state), x, 2, "float64", 4, 3, k)
    chunk = max(1, min(3, 50_000 // k))
    bounds = [
        reference.mlp_negative_iwae_bound(
            state,
            CONFIG,
            x[s : s + chunk],
            standard_normal(4, 2 * j + 1, (k, len(x[s : s + chunk]), 2)),
        )
        for j, s in enumerate(range(0, 3, chunk))
    ]
    assert got["neg_iwae"] == pytest.approx(np.mean(np.concatenate(bounds)), rel=1e-12)


def test_batch_indices_are_checked_at_both_ends():
    """Both trainers gather with the checked indices (JAX clamps out-of-range ones silently):
    -1 and n are refused, 0 and n - 1 pass, and the dtype is the one asked for."""
    for bad in ([[0, -1]], [[0, 5]]):
        with pytest.raises(ShapeError, match=r"indices in \[-?\d+, \d+\] but data has 5"):
            check_batches(np.array(bad), 5)
    ok = check_batches(np.array([[0, 4], [4, 0]]), 5)
    assert ok.dtype == np.int32 and ok.tolist() == [[0, 4], [4, 0]]
    assert check_batches(np.array([[1, 2]]), 5, wide=True).dtype == np.int64
    with pytest.raises(ShapeError, match=r"\(steps, batch\) integer array"):
        check_batches(np.array([0, 1]), 5)
    with pytest.raises(ShapeError, match=r"\(steps, batch\) integer array"):
        check_batches(np.array([[0.0, 1.0]]), 5)


def test_batches_of_one_example():
    order = batch_indices(3, 1, seed=0, epoch=1)
    assert order.shape == (3, 1) and sorted(order.ravel().tolist()) == [0, 1, 2]


def test_idx_dimensions_are_read_as_whole_big_endian_words(tmp_path):
    """Every byte of each 4-byte dimension counts (a count of 0x01020304 images of 0 x 5
    pixels: no data, so the file is just its header)."""
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(np.array([2051, 0x01020304, 0, 5], ">u4").tobytes())
    assert read_idx(path).shape == (0x01020304, 0, 5)


@pytest.mark.parametrize("low, high", [(-0.25, 1.0), (0.0, 1.25)])
def test_bernoulli_images_slightly_outside_the_unit_interval_are_refused(low, high):
    x = np.full((2, 1, 2, 2), 0.5)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = low, high
    with pytest.raises(DataError, match=r"values in \[.*\]; the Bernoulli likelihood"):
        validate_images(x, "bernoulli")
    validate_images(x, "gaussian")  # any finite value is a Gaussian mean's target


def test_reference_gaussian_log_likelihood_default_is_unit_std():
    x, mean = np.zeros((1, 1, 2, 2)), np.ones((1, 1, 2, 2))
    want = -0.5 * 4 - 4 * 0.5 * np.log(2 * np.pi)
    assert reference.gaussian_log_likelihood(x, mean)[0] == pytest.approx(want, rel=1e-14)


def test_trainer_evaluates_in_batches_of_500_by_default(state):
    """``Trainer.evaluate(x)`` is ``evaluate_batches`` with batches of 500 and seed 0: on 501
    images the second batch's noise is stream 2, so another default gives other numbers."""
    from vae_torch.train import Trainer

    x = np.random.default_rng(2).uniform(0, 1, (501, 1, 2, 2))
    trainer = Trainer(CONFIG, dtype="float64", device="cpu")
    trainer.load_state_dict(state)
    want = evaluate_batches(_terms(state), _iwae(state), x, 2, "float64", 0, 500, 0)
    got = trainer.evaluate(x)
    assert got["neg_elbo"] == pytest.approx(want["neg_elbo"], rel=1e-12)
    assert got["iwae_k"] == 0 and got["neg_iwae"] is None


def test_every_backend_hook_is_abstract():
    """Each hook that both backends implement is abstract in the contract, so a backend that
    forgot one could not be built (rather than failing at the first call)."""
    import vae_jax.train
    import vae_torch.train

    own = [vars(vae_jax.train.Trainer), vars(vae_torch.train.Trainer)]
    # The contract's own hooks and those of the classes it inherits (InferenceBase).
    contract = {name for cls in TrainerBase.__mro__ if cls is not object for name in vars(cls)}
    hooks = {
        name
        for name in contract
        if name.startswith("_")
        and not name.startswith(("__", "_abc"))
        and all(name in d for d in own)
    }
    assert len(hooks) > 10
    assert hooks <= set(TrainerBase.__abstractmethods__), hooks - TrainerBase.__abstractmethods__


def test_evaluation_of_one_image_and_the_smallest_iwae(state):
    """One image is a dataset; K = 2 is the smallest importance sample, K = 1 (the ELBO again)
    and an empty dataset are refused."""
    x = np.full((1, 1, 2, 2), 0.5)
    got = evaluate_batches(_terms(state), _iwae(state), x, 2, "float64", 0, 500, 2)
    eps = standard_normal(0, 1, (2, 1, 2))
    want = reference.mlp_negative_iwae_bound(state, CONFIG, x, eps)[0]
    assert got["n"] == 1 and got["neg_iwae"] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ConfigError, match="iwae_k must be 0"):
        evaluate_batches(_terms(state), _iwae(state), x, 2, "float64", 0, 500, 1)
    with pytest.raises(DataError, match="empty dataset"):
        evaluate_batches(_terms(state), _iwae(state), x[:0], 2, "float64")


@pytest.mark.parametrize("flush", [True, False])
def test_torch_flushes_denormals_only_while_training_and_only_when_asked(state, monkeypatch, flush):
    """``flush_denormal`` (the default) switches flushing on for the duration of each training
    call on the CPU and off again after; ``flush_denormal=False`` leaves it alone. Both trainers
    compile only when asked."""
    import vae_jax.train
    from vae_torch.train import Trainer

    calls: list[bool] = []
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: calls.append(on) or True)
    kwargs = {} if flush else {"flush_denormal": False}
    trainer = Trainer(CONFIG, dtype="float64", device="cpu", **kwargs)
    assert trainer.flush_denormal is flush and trainer.compile is False
    trainer.load_state_dict(state)
    trainer.run_steps(np.full((1, 2, 1, 2, 2), 0.5), np.zeros((1, 2, 2)))
    trainer.train_epoch(trainer.put_data(np.full((2, 1, 2, 2), 0.5)), np.array([[0, 1]]), 0, 1)
    assert calls == ([True, False] * 2 if flush else [])
    assert vae_jax.train.Trainer(CONFIG, dtype="float64").compile is False
