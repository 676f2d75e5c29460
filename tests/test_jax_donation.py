"""JAX's compiled steps donate the train state and nothing else (as their docstrings say).

Donation lets XLA update the parameters and Adam's moments in place; donating another argument
instead (the batches, the noise, the resident dataset) would keep two copies of the state alive
and, for the dataset, delete what the next epoch reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
import vae_jax.train as jt
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig

CONFIG = VAEConfig(input_shape=(1, 2, 2), hidden=(3,), latent_dim=2)


def fresh_state():
    model = vae_jax.build_model(CONFIG, "float64")
    params = vae_jax.from_canonical(model, init_canonical(CONFIG, 0, "float64"))
    return model, jt.init_train_state(model, params, TrainConfig())


def deleted(tree) -> bool:
    return all(leaf.is_deleted() for leaf in jax.tree.leaves(tree))


def kept(tree) -> bool:
    return not any(leaf.is_deleted() for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("maker", ["make_train_step", "make_run_steps", "make_indexed_step"])
def test_the_state_and_only_the_state_is_donated(maker):
    model, state = fresh_state()
    fn = getattr(jt, maker)(model, TrainConfig())
    data = jnp.full((4, 1, 2, 2), 0.5)
    if maker == "make_train_step":
        args = (data[:2], jnp.zeros((2, 2)))
    elif maker == "make_run_steps":
        args = (data.reshape(2, 2, 1, 2, 2), jnp.zeros((2, 2, 2)))
    else:
        args = (data, jnp.array([0, 1], jnp.int32), jt.epoch_key(0, 1), jnp.int32(0))
    new, _ = fn(state, *args)
    assert deleted(state) and kept(new) and kept(args)


def test_an_epoch_donates_the_state_and_keeps_the_data():
    model, state = fresh_state()
    epoch = jt.make_train_epoch(model, TrainConfig())
    data = jnp.full((4, 1, 2, 2), 0.5)
    batches = jnp.array([[0, 1], [2, 3]], jnp.int32)
    new, _ = epoch(state, data, batches, jt.epoch_key(0, 1))
    assert deleted(state) and kept(new) and kept((data, batches))


def test_the_trainer_donates_its_previous_state():
    trainer = jt.Trainer(CONFIG, TrainConfig(), dtype="float64")
    trainer.load_state_dict(init_canonical(CONFIG, 0, "float64"))
    before = trainer.state
    trainer.run_steps(np.full((2, 2, 1, 2, 2), 0.5), np.zeros((2, 2, 2)))
    assert deleted(before)
    data = trainer.put_data(np.full((4, 1, 2, 2), 0.5))
    before = trainer.state
    trainer.train_epoch(data, np.array([[0, 1], [2, 3]]), 0, 1)
    assert deleted(before) and kept(data)
