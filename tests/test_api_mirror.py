"""Both backends export the same names, and each shared function takes the same arguments."""

from __future__ import annotations

import inspect

import pytest

import vae_jax
import vae_torch


def shared_names() -> list[str]:
    return sorted(set(vae_jax.__all__) - set(vae_jax.JAX_ONLY))


def test_same_public_names_apart_from_the_declared_extras():
    assert set(vae_jax.__all__) - set(vae_jax.JAX_ONLY) == set(vae_torch.__all__) - set(
        vae_torch.TORCH_ONLY
    )
    for mod, only in ((vae_jax, vae_jax.JAX_ONLY), (vae_torch, vae_torch.TORCH_ONLY)):
        assert len(mod.__all__) == len(set(mod.__all__)), f"{mod.__name__}.__all__ has duplicates"
        assert set(only) <= set(mod.__all__)
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.__all__ names missing {name}"


def test_every_public_function_is_listed_in_all():
    for mod in (vae_jax, vae_torch):
        public = {
            name
            for name, obj in vars(mod).items()
            if not name.startswith("_")
            and not inspect.ismodule(obj)
            and getattr(obj, "__module__", "").startswith(mod.__name__)
        }
        unlisted = public - set(mod.__all__)
        assert not unlisted, f"{mod.__name__} exports names missing from __all__: {unlisted}"


def shared_functions() -> list[str]:
    return [
        n
        for n in shared_names()
        if inspect.isfunction(getattr(vae_jax, n)) and inspect.isfunction(getattr(vae_torch, n))
    ]


def test_the_core_functions_are_shared():
    assert {
        "build_model",
        "init_params",
        "encode",
        "decode",
        "decode_mean",
        "reparameterize",
        "sample_eps",
        "gaussian_kl",
        "bernoulli_log_likelihood",
        "gaussian_log_likelihood",
        "log_likelihood",
        "elbo_terms",
        "negative_elbo",
        "loss",
        "negative_iwae_bound",
        "standard_normal_log_density",
        "to_canonical",
        "from_canonical",
    } <= set(shared_functions())


@pytest.mark.parametrize("name", shared_functions())
def test_same_signature(name):
    j = inspect.signature(getattr(vae_jax, name))
    t = inspect.signature(getattr(vae_torch, name))

    def params(sig):
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    assert params(j) == params(t), f"{name}: jax {j} vs torch {t}"


@pytest.mark.parametrize("name", shared_functions())
def test_same_file(name):
    # The same function sits in the same file of each backend (model, losses, sampling, convert).
    j = getattr(vae_jax, name).__module__.removeprefix("vae_jax.")
    t = getattr(vae_torch, name).__module__.removeprefix("vae_torch.")
    assert j == t, f"{name}: vae_jax.{j} vs vae_torch.{t}"


def test_shared_classes():
    assert vae_jax.VAEConfig is vae_torch.VAEConfig
    assert issubclass(vae_jax.ShapeError, ValueError)
    assert issubclass(vae_torch.ShapeError, ValueError)
    for name in shared_names():
        j, t = getattr(vae_jax, name), getattr(vae_torch, name)
        assert inspect.isclass(j) == inspect.isclass(t), name
