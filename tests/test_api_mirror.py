"""Both backends export the same names, and each shared function takes the same arguments:
the package surface, each module file by file (model, losses, sampling, convert, device,
distributed, train), and the ``Trainer`` methods against the shared contract
``vae_common.trainer.TrainerBase``."""

from __future__ import annotations

import importlib
import inspect

import pytest

import vae_jax
import vae_torch
from vae_common.trainer import TrainerBase

MODULES = (
    "model",
    "input_checks",
    "losses",
    "sampling",
    "convert",
    "device",
    "distributed",
    "train",
    "trainer",
    "data_parallel",
)


def shared_names() -> list[str]:
    return sorted(set(vae_jax.__all__) - set(vae_jax.JAX_ONLY))


def test_same_public_names_apart_from_the_declared_extras():
    assert set(vae_jax.__all__) - set(vae_jax.JAX_ONLY) == set(vae_torch.__all__) - set(
        vae_torch.TORCH_ONLY
    )
    assert set(vae_jax.JAX_ONLY).isdisjoint(vae_torch.__all__)
    assert set(vae_torch.TORCH_ONLY).isdisjoint(vae_jax.__all__)
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
        "gaussian_kl_per_dim",
        "objective",
        "select_device",
        "supports_float64",
        "check_dtype",
        "synchronize",
        "make_optimizer",
        "make_train_step",
        "make_run_steps",
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
    # The same function sits in the same file of each backend (model, losses, sampling, convert,
    # device, train).
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


def _module_pair(name: str):
    return importlib.import_module(f"vae_jax.{name}"), importlib.import_module(f"vae_torch.{name}")


def _own_public_functions(mod) -> set[str]:
    return {
        n
        for n, obj in vars(mod).items()
        if not n.startswith("_") and inspect.isfunction(obj) and obj.__module__ == mod.__name__
    }


@pytest.mark.parametrize("name", MODULES)
def test_each_module_defines_the_same_functions(name):
    # File by file: every public function defined in vae_jax/<name>.py has its twin, with the
    # same signature, in vae_torch/<name>.py, apart from the extras each module declares
    # (JAX_ONLY / TORCH_ONLY).
    j, t = _module_pair(name)
    j_only = set(getattr(j, "JAX_ONLY", ()))
    t_only = set(getattr(t, "TORCH_ONLY", ()))
    j_funcs, t_funcs = _own_public_functions(j) - j_only, _own_public_functions(t) - t_only
    assert j_funcs == t_funcs, (
        f"{name}.py: jax-only {j_funcs - t_funcs}, torch-only {t_funcs - j_funcs}"
    )
    for fn in sorted(j_funcs):
        js, ts = inspect.signature(getattr(j, fn)), inspect.signature(getattr(t, fn))
        assert [(p.name, p.kind, p.default) for p in js.parameters.values()] == [
            (p.name, p.kind, p.default) for p in ts.parameters.values()
        ], f"{name}.{fn}: jax {js} vs torch {ts}"


def test_train_modules_list_the_same_names():
    j, t = _module_pair("train")
    assert set(j.__all__) - set(j.JAX_ONLY) == set(t.__all__) - set(t.TORCH_ONLY)
    assert set(j.JAX_ONLY) <= set(j.__all__) and set(t.TORCH_ONLY) <= set(t.__all__)


def _public_members(cls) -> dict[str, object]:
    return {
        n: inspect.getattr_static(cls, n)
        for n in dir(cls)
        if not n.startswith("_") and n != "backend"
    }


@pytest.mark.parametrize("trainer", [vae_jax.Trainer, vae_torch.Trainer], ids=["jax", "torch"])
def test_trainer_implements_exactly_the_contract(trainer):
    assert issubclass(trainer, TrainerBase)
    assert not inspect.isabstract(trainer)
    assert trainer.backend in ("jax", "torch")
    contract = _public_members(TrainerBase)
    members = _public_members(trainer)
    assert set(members) == set(contract), (
        f"{trainer.__module__}.Trainer public members differ from TrainerBase: "
        f"extra {set(members) - set(contract)}, missing {set(contract) - set(members)}"
    )
    for name, member in members.items():
        # Public methods are the contract's own (the backend implements the _hooks only).
        assert member is contract[name], f"{trainer.__module__}.Trainer overrides {name}"
    base = inspect.signature(TrainerBase.__init__)
    assert inspect.signature(trainer.__init__).parameters.keys() == base.parameters.keys()
    assert [p.default for p in inspect.signature(trainer.__init__).parameters.values()] == [
        p.default for p in base.parameters.values()
    ]
