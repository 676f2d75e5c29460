"""Contracts of the small shared modules (``vae_common.batches``, ``training``, ``evaluation``,
``layout``) at their edges, each against a value computed here.

Each test pins an edge a full (unsampled) generic mutation run found unpinned: that both epoch
functions shuffle unless told not to and accept a batch of the whole dataset, but not one of
size 0; how many of the missing optimizer tensors the error names before it elides the rest;
that ``TrainConfig`` refuses every negative or non-finite number, accepts moment decays of 0, is
frozen and loads a file that names only some fields; that the evaluation refuses
``iwae_k = -1`` and a batch size of 0 but evaluates batches of one and ``iwae_k = IWAE_CHUNK``;
which axis a forced layout's refusal names. Numpy only, fast.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from vae_common.batches import batch_indices, last_batch_indices
from vae_common.config import ConfigError, VAEConfig
from vae_common.errors import DataError
from vae_common.evaluation import IWAE_CHUNK, evaluate_batches
from vae_common.layout import resolve_layout
from vae_common.training import TrainConfig, optimizer_state_names, split_optimizer_state

CONFIG = VAEConfig(input_shape=(1, 2, 2), hidden=(3,), latent_dim=2)


@pytest.mark.parametrize("fn", [batch_indices, last_batch_indices])
def test_epoch_indices_are_shuffled_by_default(fn):
    """Without ``shuffle``, an epoch's order is the permutation drawn from ``(seed, epoch)``
    (the same as ``shuffle=True``), not the identity ``shuffle=False`` gives."""
    n, batch_size, seed, epoch = 23, 4, 7, 2
    default = fn(n, batch_size, seed, epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // batch_size
    expected = (
        order[: steps * batch_size].reshape(steps, batch_size)
        if fn is batch_indices
        else order[steps * batch_size :]
    )
    np.testing.assert_array_equal(default, expected)
    np.testing.assert_array_equal(default, fn(n, batch_size, seed, epoch, shuffle=True))
    assert not np.array_equal(default, fn(n, batch_size, seed, epoch, shuffle=False))


@pytest.mark.parametrize("count", [1, 4, 5, 9])
def test_missing_optimizer_tensors_are_named_up_to_four(count):
    """The error lists the first four missing names in ``optimizer_state_names`` order, then
    ``...`` only when more than four are missing."""
    names = optimizer_state_names(CONFIG)
    assert len(names) > 9
    dropped = names[-count:]
    tensors = {n: np.zeros(1) for n in names if n not in dropped}
    shown = f"{dropped[:4]}{'...' if count > 4 else ''}"
    with pytest.raises(
        ConfigError, match=f"^{re.escape(f'optimizer state lacks tensors {shown}')}$"
    ):
        split_optimizer_state(tensors, CONFIG)


@pytest.mark.parametrize("fn", [batch_indices, last_batch_indices])
def test_epoch_indices_bounds_of_batch_size(fn):
    """A batch size of 0 is refused (not an empty epoch), and one equal to the dataset is
    accepted: one full batch, nothing left over."""
    with pytest.raises(DataError, match="^batch_size must be positive, got 0$"):
        fn(6, 0, 0, 0)
    with pytest.raises(
        DataError, match=r"^batch_size 7 is larger than the dataset \(6 examples\)$"
    ):
        fn(6, 7, 0, 0)
    whole = fn(6, 6, 3, 1)
    order = np.random.default_rng([3, 1]).permutation(6)
    if fn is batch_indices:
        np.testing.assert_array_equal(whole, order.reshape(1, 6))
    else:
        assert whole.shape == (0,)


@pytest.mark.parametrize(
    "field, value",
    [("beta", -0.5), ("free_bits", -1e-9), ("adam_eps", -1.0), ("beta", np.inf), ("lr", np.nan)],
)
def test_train_config_refuses_a_negative_or_non_finite_number(field, value):
    """Every number of the objective and of Adam must be finite and >= 0 (the checks after the
    loop test only lr > 0, b1, b2 < 1 and the warm-up); an infinite beta is non-negative but
    still refused."""
    with pytest.raises(
        ConfigError, match=f"^{re.escape(f'{field} must be a finite non-negative number, got ')}"
    ):
        TrainConfig(**{field: value})


def test_train_config_accepts_zero_moment_decays_and_is_frozen():
    """b1 = b2 = 0 (no momentum, no second-moment averaging) lie in [0, 1) and are accepted;
    a TrainConfig cannot be changed after its checks ran."""
    train = TrainConfig(b1=0.0, b2=0.0)
    assert (train.b1, train.b2) == (0.0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.beta = -1.0  # type: ignore[misc]


def test_evaluation_refuses_iwae_k_of_minus_one():
    """Every negative sample count is refused, -1 included, before any batch is evaluated."""

    def never(*args):
        raise AssertionError("no batch may be evaluated")

    with pytest.raises(ConfigError, match=r"^iwae_k must be 0 \(no IWAE\) or in \[2, .*got -1 "):
        evaluate_batches(never, never, np.zeros((3, 1, 2, 2)), 2, "float64", iwae_k=-1)


def test_train_config_from_json_fills_absent_fields_with_defaults():
    """A file naming only some fields (neither ``adam_eps`` nor the old ``eps`` among them)
    loads with the defaults for the rest; one with the old name loads it as ``adam_eps``."""
    assert TrainConfig.from_json('{"lr": 0.01}') == TrainConfig(lr=0.01)
    assert TrainConfig.from_json('{"eps": 1e-6, "lr": 0.01}') == TrainConfig(lr=0.01, adam_eps=1e-6)


def test_evaluation_batches_of_one_and_of_zero():
    """Batches of one example are evaluated (each with its own noise stream 2j); a batch size of
    0 is refused before any batch."""
    x = np.arange(12, dtype=np.float64).reshape(3, 1, 2, 2)

    def terms(xb, eps):
        return xb.reshape(len(xb), -1).sum(axis=1), (eps**2).sum(axis=1)

    got = evaluate_batches(terms, None, x, 2, "float64", seed=4, batch_size=1)
    eps = [np.random.default_rng([4, 2 * j]).standard_normal((1, 2)) for j in range(3)]
    assert got["n"] == 3 and got["neg_iwae"] is None
    np.testing.assert_allclose(got["reconstruction"], x.reshape(3, -1).sum(axis=1).mean())
    np.testing.assert_allclose(got["kl"], np.mean([(e**2).sum() for e in eps]))

    def never(*args):
        raise AssertionError("no batch may be evaluated")

    with pytest.raises(ConfigError, match="^batch_size must be positive, got 0$"):
        evaluate_batches(never, never, x, 2, "float64", batch_size=0)


def test_evaluation_accepts_iwae_k_of_iwae_chunk_one_example_at_a_time():
    """``iwae_k = IWAE_CHUNK`` is the largest count accepted: the IWAE bound is then taken one
    example at a time, each with its ``(IWAE_CHUNK, 1, L)`` noise of stream 2j + 1."""
    x = np.zeros((2, 1, 2, 2))
    seen = []

    def terms(xb, eps):
        return np.zeros(len(xb)), np.zeros(len(xb))

    def iwae(xb, eps):
        seen.append(eps)
        return np.full(len(xb), eps.sum())

    got = evaluate_batches(terms, iwae, x, 2, "float64", seed=1, iwae_k=IWAE_CHUNK)
    assert [e.shape for e in seen] == [(IWAE_CHUNK, 1, 2)] * 2
    want = [
        np.random.default_rng([1, 2 * j + 1]).standard_normal((IWAE_CHUNK, 1, 2)) for j in (0, 1)
    ]
    np.testing.assert_array_equal(seen, want)
    assert got["iwae_k"] == IWAE_CHUNK
    np.testing.assert_allclose(got["neg_iwae"], np.mean([w.sum() for w in want]))


@pytest.mark.parametrize(
    "shape, layout, axis", [((2, 5, 6, 6), "nchw", 1), ((2, 6, 6, 5), "nhwc", 3)]
)
def test_forced_layout_names_the_channel_axis_it_refuses(shape, layout, axis):
    """A forced layout whose channel axis holds no 1, 3 or 4 names that axis: 1 for nchw, 3 for
    nhwc."""
    with pytest.raises(DataError) as info:
        resolve_layout(shape, layout, what="train images")
    assert str(info.value) == (
        f"train images have shape {shape}: layout {layout!r} puts 5 channels on axis {axis}, "
        "but images have 1, 3 or 4 channels"
    )
