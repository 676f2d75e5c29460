"""The losses' settings given as arrays (``vae_jax.input_checks``, ``vae_torch.input_checks``):
a 0-d array is that number, checked like it, any other shape is refused, in both backends alike
(``std``, ``beta``, ``free_bits``; JAX also when traced); and arrays of a dtype that is not
floating point (inputs, torch parameters) refused naming the dtype.

Each test pins an edge a generic mutation run found unpinned; values against
``vae_common.reference``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vae_jax
import vae_jax.losses
import vae_torch
import vae_torch.losses
from vae_common import reference
from vae_common.config import VAEConfig
from vae_common.errors import CheckpointError, ConfigError, ShapeError
from vae_common.spec import init_canonical

X = np.random.default_rng(0).uniform(0, 1, (3, 1, 2, 2))
MEAN = np.random.default_rng(1).uniform(0, 1, (3, 1, 2, 2))


def gaussian(backend: str, std):
    if backend == "jax":
        return np.asarray(vae_jax.losses.gaussian_log_likelihood(X, MEAN, jnp.asarray(std)))
    got = vae_torch.losses.gaussian_log_likelihood(
        torch.as_tensor(X), torch.as_tensor(MEAN), torch.tensor(std, dtype=torch.float64)
    )
    return got.numpy()


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_0d_array_std_is_the_number(backend):
    want = reference.gaussian_log_likelihood(X, MEAN, 0.7)
    np.testing.assert_allclose(gaussian(backend, 0.7), want, rtol=1e-12)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("std, shape", [([0.7], "(1,)"), ([[0.7, 0.7]], "(1, 2)")])
def test_an_std_of_any_other_shape_is_refused(backend, std, shape):
    """One element or several: an array std is refused naming its shape (not read as its
    first element)."""
    message = f"std must be a number (a scalar), got an array of shape {shape}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        gaussian(backend, std)


CONFIG = VAEConfig(input_shape=(1, 2, 2), hidden=(3,), latent_dim=2)
EPS = np.random.default_rng(2).standard_normal((3, 2))


def objective(backend: str, beta, free_bits, jit: bool = False) -> float:
    state = init_canonical(CONFIG, 0, "float64")
    if backend == "jax":
        model = vae_jax.build_model(CONFIG, "float64")
        params = vae_jax.from_canonical(model, state)
        # free_bits is read by a Python branch of the objective: never traced (under jit a
        # numpy constant, which jnp operations would stage).
        floor = np.asarray(free_bits) if jit else jnp.asarray(free_bits)
        fn = lambda b: vae_jax.losses.objective(model, params, X, EPS, b, floor)  # noqa: E731
        return float((jax.jit(fn) if jit else fn)(jnp.asarray(beta)))
    model = vae_torch.build_model(CONFIG, "float64")
    vae_torch.from_canonical(model, state)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        value = vae_torch.losses.objective(
            model, None, torch.as_tensor(X), torch.as_tensor(EPS), as_t(beta), as_t(free_bits)
        )
    return float(value)


@pytest.mark.parametrize("backend, jit", [("jax", False), ("jax", True), ("torch", False)])
def test_0d_array_beta_and_free_bits_are_the_numbers(backend, jit):
    """The objective with beta and free_bits given as 0-d arrays is the numpy objective with
    those numbers (beta traced under jax.jit too)."""
    state = init_canonical(CONFIG, 0, "float64")
    want = reference.mlp_objective_and_grads(state, CONFIG, X, EPS, 0.8, 0.05)[0]
    assert objective(backend, 0.8, 0.05, jit) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("backend, jit", [("jax", False), ("jax", True), ("torch", False)])
@pytest.mark.parametrize("name", ["beta", "free_bits"])
def test_shaped_beta_or_free_bits_are_refused(backend, jit, name):
    values = {"beta": 0.8, "free_bits": 0.05}
    values[name] = [values[name]]
    message = f"{name} must be a number (a scalar), got an array of shape (1,)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        objective(backend, values["beta"], values["free_bits"], jit)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_a_0d_array_std_outside_its_range_is_refused(backend, std):
    """A concrete 0-d std is checked like the number: finite and > 0."""
    with pytest.raises(ConfigError, match=re.escape(f"finite positive number, got {std!r}")):
        gaussian(backend, std)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("dtype", ["int64", "bool", "complex64"])
def test_images_of_a_dtype_that_is_not_floating_point_are_refused(backend, dtype):
    """x given as the backend's own array of an integer, bool or complex dtype is a ShapeError
    naming the dtype (not cast to the model's dtype)."""
    message = (
        "x must be floating point (float16, bfloat16, float32, float64; not integer, bool or "
        f"complex), got dtype {dtype}"
    )
    x = X.astype(dtype)
    with pytest.raises(ShapeError, match=re.escape(message)):
        if backend == "jax":
            model = vae_jax.build_model(CONFIG, "float64")
            params = vae_jax.from_canonical(model, init_canonical(CONFIG, 0, "float64"))
            vae_jax.loss(model, params, jnp.asarray(x), EPS)
        else:
            model = vae_torch.build_model(CONFIG, "float64")
            vae_torch.losses.loss(model, None, torch.as_tensor(x), torch.as_tensor(EPS))


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex128])
def test_torch_params_of_a_dtype_that_is_not_floating_point_are_named(dtype):
    """A params mapping holding a tensor of another dtype is a CheckpointError naming that
    tensor, its dtype and the model's."""
    model = vae_torch.build_model(CONFIG, "float64")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    name = next(iter(params))
    params[name] = params[name].to(dtype)
    got = str(dtype).removeprefix("torch.")
    with pytest.raises(
        CheckpointError, match=re.escape(f"{name!r} has shape (3, 4) and dtype {got};")
    ):
        vae_torch.losses.loss(model, params, torch.as_tensor(X), torch.as_tensor(EPS))


class _OnlyShape:
    shape = (3, 4)


class _OnlyDtype:
    dtype = np.dtype("float64")


@pytest.mark.parametrize("leaf", [_OnlyShape(), _OnlyDtype()])
def test_jax_params_leaves_need_both_a_shape_and_a_dtype(leaf):
    """A leaf of the params mapping with only one of ``shape`` and ``dtype`` is not an array: a
    CheckpointError naming it (not an AttributeError from reading the other)."""
    from vae_jax.input_checks import check_params

    model = vae_jax.build_model(CONFIG, "float64")
    params = vae_jax.from_canonical(model, init_canonical(CONFIG, 0, "float64"))
    inner = params[next(iter(params))]
    key = next(iter(inner))
    inner[key] = leaf
    with pytest.raises(CheckpointError, match=f"is a {type(leaf).__name__}, not an array"):
        check_params(model, params)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("std", ["0.5", None])
def test_an_std_that_is_not_a_number_is_named_as_given(backend, std):
    """``std`` given as a string or None: one ConfigError quoting the value as given (not
    converted to an array first), in both backends."""
    checks = vae_jax.input_checks if backend == "jax" else vae_torch.input_checks
    with pytest.raises(ConfigError) as info:
        checks.check_std(std)
    assert str(info.value) == f"std must be a real number, got {std!r}"
