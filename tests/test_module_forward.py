"""The modules called directly, as PyTorch and Flax users call them: ``model(x)`` in torch draws
its noise (``torch.randn_like``, repeatable under ``torch.manual_seed``), ``model(x, eps)`` takes
it; in JAX ``model.apply(variables, x, eps)`` takes it and ``rngs={"noise": key}`` draws it. The
explicit forms meet the numpy forward pass and each other (float64)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import vae_jax
import vae_torch
from vae_common import reference
from vae_common.compare import TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError, ShapeError
from vae_common.spec import init_canonical

CONFIG = VAEConfig(input_shape=(1, 6, 6), hidden=(12,), latent_dim=3)
TOL = TOLERANCES["float64"]


@pytest.fixture(scope="module")
def state():
    return init_canonical(CONFIG, seed=1, dtype="float64")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((5, 1, 6, 6))


@pytest.fixture(scope="module")
def torch_model(state):
    model = vae_torch.build_model(CONFIG, "float64")
    vae_torch.from_canonical(model, state)
    return model


@pytest.fixture(scope="module")
def jax_model(state):
    model = vae_jax.build_model(CONFIG, "float64")
    return model, {"params": vae_jax.from_canonical(model, state)}


def test_torch_model_of_x_draws_randn_like_under_the_global_seed(torch_model, x):
    xt = torch.as_tensor(x)
    torch.manual_seed(7)
    decoded, mean, logvar = torch_model(xt)
    torch.manual_seed(7)
    eps = torch.randn_like(mean)
    explicit = torch_model(xt, eps)
    for drawn, given in zip((decoded, mean, logvar), explicit, strict=True):
        torch.testing.assert_close(drawn, given, rtol=0, atol=0)
    assert decoded.shape == (5, 1, 6, 6) and mean.shape == logvar.shape == (5, 3)
    # Without re-seeding, the next call draws other noise (the posterior is the same).
    again, mean2, _ = torch_model(xt)
    assert not torch.equal(again, decoded)
    torch.testing.assert_close(mean2, mean, rtol=0, atol=0)


def test_explicit_noise_forms_meet_numpy_and_each_other(torch_model, jax_model, state, x):
    eps = np.random.default_rng(1).standard_normal((5, 3))
    expected = reference.mlp_forward(state, CONFIG, x, eps)
    with torch.no_grad():
        from_torch = [t.numpy() for t in torch_model(torch.as_tensor(x), torch.as_tensor(eps))]
    model, variables = jax_model
    from_jax = [np.asarray(a) for a in model.apply(variables, x, eps)]
    names = ("decoded", "mean", "logvar")
    for name, want, t, j in zip(names, expected, from_torch, from_jax, strict=True):
        assert rel_diff(t, want) <= TOL, name
        assert rel_diff(j, t) <= TOL, name


def test_jax_rngs_form_draws_from_the_noise_stream(jax_model, x):
    model, variables = jax_model
    key = jax.random.key(3)
    first = model.apply(variables, x, rngs={"noise": key})
    second = jax.jit(lambda v, x, k: model.apply(v, x, rngs={"noise": k}))(variables, x, key)
    other = model.apply(variables, x, rngs={"noise": jax.random.key(4)})
    at_mean = model.apply(variables, x, np.zeros((5, 3)))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14)
    assert rel_diff(other[0], first[0]) > 1e-3
    assert rel_diff(at_mean[0], first[0]) > 1e-3
    # The noise moves z, not the posterior.
    np.testing.assert_array_equal(np.asarray(other[1]), np.asarray(first[1]))
    np.testing.assert_array_equal(np.asarray(other[2]), np.asarray(first[2]))


def test_jax_without_noise_or_key_says_what_to_pass(jax_model, x):
    model, variables = jax_model
    with pytest.raises(ConfigError, match=r"rngs=\{'noise': key\}"):
        model.apply(variables, x)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_bad_inputs_to_the_module_are_refused(backend, torch_model, jax_model, x):
    if backend == "torch":

        def call(*args):
            return torch_model(*(torch.as_tensor(a) for a in args))
    else:
        model, variables = jax_model

        def call(*args):
            return model.apply(variables, *args)

    with pytest.raises(ShapeError, match=r"eps of shape \(B, L\), got \(2, 5, 3\)"):
        call(x, np.zeros((2, 5, 3)))
    with pytest.raises(ShapeError, match=r"eps has shape \(4, 3\)"):
        call(x, np.zeros((4, 3)))
    with pytest.raises(ShapeError, match=r"x has shape \(5, 1, 6, 5\)"):
        call(x[..., :5], np.zeros((5, 3)))


def test_torch_forward_entry_points(torch_model, x):
    xt = torch.as_tensor(x)
    mean, logvar = torch_model(xt, method="encode")
    torch.testing.assert_close(torch_model(xt, torch.zeros(5, 3))[1], mean, rtol=0, atol=0)
    assert torch_model(mean, method="decode").shape == (5, 1, 6, 6)
    with pytest.raises(ConfigError, match="method must be"):
        torch_model(xt, method="sample")
