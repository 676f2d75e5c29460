"""Contracts of the shared trainer plumbing (``vae_common.trainer``, ``trainer_checks``) at
their edges, in both backends: each test pins an edge a generic mutation run found unpinned.

Tiny models in float64 on the CPU, a few steps each.
"""

from __future__ import annotations

import numpy as np
import pytest

from vae_common.config import VAEConfig
from vae_common.errors import ConfigError, ShapeError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig

CONFIG = VAEConfig(input_shape=(1, 2, 2), hidden=(3,), latent_dim=2)
BACKENDS = ["jax", "torch"]


def trainer(backend: str):
    if backend == "jax":
        from vae_jax.trainer import Trainer
    else:
        from vae_torch.trainer import Trainer
    t = Trainer(CONFIG, TrainConfig(lr=1e-2), "float64", device="cpu")
    t.load_state_dict(init_canonical(CONFIG, 3, "float64"))
    return t


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_streamed_epoch_of_one_batch_makes_the_resident_step(backend):
    """An epoch may be a single batch (S = 1): streamed, it makes the resident data's step
    (the same loss and weights)."""
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 2, 2))
    batches = np.array([[4, 0, 2]])
    resident, streamed = trainer(backend), trainer(backend)
    want = resident.train_epoch(resident.put_data(x), batches, 7, 1)
    got = streamed.train_epoch(streamed.put_data(x, stream=True), batches, 7, 1)
    assert got.shape == (1,)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    for name, value in resident.state_dict().items():
        np.testing.assert_allclose(streamed.state_dict()[name], value, rtol=1e-15, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_trainer_without_weights_refuses_every_use_of_them(backend):
    """Before ``load_state_dict`` there are no weights to read, count or train (torch's model
    holds its own random initial values, which are not the user's): each use is one
    ConfigError naming the call to make."""
    if backend == "jax":
        from vae_jax.trainer import Trainer
    else:
        from vae_torch.trainer import Trainer
    t = Trainer(CONFIG, TrainConfig(lr=1e-2), "float64", device="cpu")
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 2, 2))
    uses = [
        t.state_dict,
        lambda: t.step,
        t.optimizer_state_dict,
        lambda: t.train_epoch(t.put_data(x), np.array([[0, 1]]), 0, 0),
    ]
    for use in uses:
        with pytest.raises(ConfigError, match=r"has no weights yet: call load_state_dict first"):
            use()


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_wait_is_zero_after_a_resident_epoch(backend):
    """``data_wait_s`` counts a streamed epoch's waits; an epoch on resident data waited for
    none, also after a streamed one."""
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 2, 2))
    t = trainer(backend)
    assert t.data_wait_s == 0.0
    t.train_epoch(t.put_data(x, stream=True), np.array([[0, 1]]), 0, 0)
    t.train_epoch(t.put_data(x), np.array([[2, 3]]), 0, 1)
    assert t.data_wait_s == 0.0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_epoch_of_no_steps_returns_no_losses(backend, stream):
    """``batches`` of shape (0, B) (fewer examples than one batch, the last batch dropped): an
    empty float64 array, the weights and the step count unchanged, resident or streamed."""
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 2, 2))
    t = trainer(backend)
    before = t.state_dict()
    losses = t.train_epoch(t.put_data(x, stream=stream), np.zeros((0, 2), np.int64), 0, 0)
    assert losses.shape == (0,) and losses.dtype == np.float64
    assert t.step == 0 and t.data_wait_s == 0.0
    for name, value in t.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_steps_refuses_noise_of_the_wrong_shape_beside_good_batches(backend):
    """Good batches (S, B, C, H, W) do not let noise of another shape through, and batches
    of another number of axes (0-d included) are refused beside good noise: one ShapeError
    naming both shapes, before any step."""
    t = trainer(backend)
    xs = np.random.default_rng(0).uniform(0, 1, (2, 3, 1, 2, 2))
    for eps_shape in [(2, 3, 3), (2, 4, 2), (1, 3, 2)]:
        with pytest.raises(ShapeError) as info:
            t.run_steps(xs, np.zeros(eps_shape))
        assert str(info.value) == (
            f"run_steps needs xs (S, B, C, H, W) and eps (S, B, 2), got xs {xs.shape} and "
            f"eps {eps_shape}"
        )
    for bad in [np.float64(0.5), np.zeros(3), np.zeros((2, 3)), np.zeros((2, 3, 1, 2))]:
        with pytest.raises(ShapeError, match=r"run_steps needs xs \(S, B, C, H, W\)"):
            t.run_steps(bad, np.zeros((2, 3, 2)))
    assert t.step == 0


def test_streamed_data_of_another_model_is_refused_naming_both():
    """Data streamed for a Gaussian model is not checked for a Bernoulli one: ConfigError
    naming the shape and likelihood it was checked for and the trainer's."""
    from vae_torch.trainer import Trainer

    gaussian = Trainer(CONFIG.replace(likelihood="gaussian"), dtype="float64", device="cpu")
    data = gaussian.put_data(np.full((4, 1, 2, 2), 2.0), stream=True)
    with pytest.raises(ConfigError) as info:
        trainer("torch").train_epoch(data, np.array([[0, 1]]), 0, 1)
    assert str(info.value).startswith(
        "the streamed data was checked for input shape (1, 2, 2) and likelihood 'gaussian', but "
        "this trainer's model has (1, 2, 2) and 'bernoulli'"
    )


# -- torch's Adam: fused where this build has the kernel ---------------------------------------


def test_torch_adam_is_fused_where_the_build_has_the_kernel():
    """This torch build has a fused CPU Adam (float64 too): the trainer's optimizer uses it, with
    the configured settings."""
    from vae_torch.train import make_optimizer
    from vae_torch.trainer import Trainer

    t = Trainer(CONFIG, TrainConfig(lr=0.25, b1=0.5, b2=0.75, adam_eps=1e-3), "float64", "cpu")
    group = make_optimizer(t.model, t.train_config).param_groups[0]
    assert group["fused"] is True
    assert (group["lr"], group["betas"], group["eps"]) == (0.25, (0.5, 0.75), 1e-3)
    assert t.optimizer.param_groups[0]["fused"] is True


@pytest.mark.parametrize("error", [RuntimeError, ValueError])
def test_torch_adam_falls_back_to_the_default_kernel_where_fused_is_refused(monkeypatch, error):
    """Where torch refuses ``fused=True`` (RuntimeError or ValueError, by build and device),
    ``make_optimizer`` builds the default Adam; asking for fused alone raises torch's error."""
    import torch

    from vae_torch import train
    from vae_torch.model import build_model

    real = torch.optim.Adam

    def adam(params, fused=None, **kwargs):
        if fused:
            raise error("no fused kernel here")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    model = build_model(CONFIG, "float64")
    group = train.make_optimizer(model, TrainConfig(lr=0.5)).param_groups[0]
    assert not group["fused"] and group["lr"] == 0.5
    with pytest.raises(error, match="no fused kernel"):
        train._adam(model, TrainConfig(), fused=True)
    assert not train._adam(model, TrainConfig(), fused=False).param_groups[0]["fused"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_trainer_defaults(backend):
    """Built from a config (on the CPU) alone: float32, no compilation, denormals flushed (JAX
    accepts the switch for symmetry), one device, float32 products, uneven batches refused."""
    if backend == "jax":
        from vae_jax.trainer import Trainer
    else:
        from vae_torch.trainer import Trainer
    t = Trainer(CONFIG, device="cpu")
    got = (t.dtype, t.compile, t.flush_denormal, t.devices, t.precision, t.uneven)
    assert got == ("float32", False, True, None, "float32", "refuse")


# -- JAX: every jitted step donates the train state ------------------------------------------------


def _deleted(tree) -> bool:
    import jax

    return all(leaf.is_deleted() for leaf in jax.tree.leaves(tree))


def test_the_jax_streamed_step_donates_the_state():
    """A streamed epoch on one device updates the train state in place like the resident one
    (the previous state's buffers are donated), and leaves the host data alone."""
    t = trainer("jax")
    x = np.full((4, 1, 2, 2), 0.5)
    before = t.state
    t.train_epoch(t.put_data(x, stream=True), np.array([[0, 1], [2, 3]]), 0, 1)
    assert _deleted(before) and t.step == 2
    np.testing.assert_array_equal(x, 0.5)


_MESH_DONATION = """
import json

import jax
import numpy as np

from vae_common.config import VAEConfig
from vae_common.spec import init_canonical
from vae_jax.trainer import Trainer

def deleted(tree):
    return all(leaf.is_deleted() for leaf in jax.tree.leaves(tree))

configs = {
    "mlp": VAEConfig(input_shape=(1, 2, 2), hidden=(3,), latent_dim=2),
    # Conv models on the CPU take the per-step path (the indexed step).
    "conv": VAEConfig(
        input_shape=(1, 4, 4), hidden=(), latent_dim=2, arch="conv", conv_channels=(2,)
    ),
}
out = {}
for name, config in configs.items():
    t = Trainer(config, device="cpu", devices=2)
    t.load_state_dict(init_canonical(config, 0))
    x = np.full((4,) + config.input_shape, 0.5, np.float32)
    batches = np.array([[0, 1], [2, 3]])
    before = t.state
    t.run_steps(x.reshape((2, 2) + config.input_shape), np.zeros((2, 2, 2), np.float32))
    out[name + "/run_steps"] = deleted(before)
    data = t.put_data(x)
    before = t.state
    t.train_epoch(data, batches, 0, 1)
    out[name + "/train_epoch"] = deleted(before) and not data.is_deleted()
    before = t.state
    t.train_epoch(t.put_data(x, stream=True), batches, 0, 2)
    out[name + "/stream"] = deleted(before)
print(json.dumps(out))
"""


def test_the_jax_mesh_steps_donate_the_state():
    """On a 2-device mesh (forced host devices, in a fresh process) each jitted step (given
    steps, the scanned epoch, the per-step epoch of a conv model, a streamed epoch) donates the
    train state, as on one device, and keeps the resident dataset."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    done = subprocess.run(
        [sys.executable, "-c", _MESH_DONATION], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {
        f"{m}/{s}": True for m in ("mlp", "conv") for s in ("run_steps", "train_epoch", "stream")
    }


# -- torch: what construction requires of the host ---------------------------------------------


def test_torch_only_a_compiled_trainer_needs_a_cpu_compiler(monkeypatch):
    """Without the C++ compiler torch.compile builds CPU kernels with (``$CXX`` naming none),
    ``compile=True`` is refused at construction naming it, and the eager trainer neither asks
    for one nor fails: it builds and takes a step."""
    from vae_common.errors import DeviceError
    from vae_torch.trainer import Trainer

    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(DeviceError, match=r"'no-such-c\+\+-compiler' was not found"):
        Trainer(CONFIG, dtype="float64", device="cpu", compile=True)
    t = Trainer(CONFIG, TrainConfig(lr=1e-2), "float64", device="cpu")
    t.load_state_dict(init_canonical(CONFIG, 3, "float64"))
    t.run_steps(np.full((1, 2) + CONFIG.input_shape, 0.5), np.zeros((1, 2, 2)))
    assert t.step == 1


def test_torch_only_bf16_needs_autocast_on_the_device(monkeypatch):
    """On a device whose torch build has no autocast, ``precision="bf16"`` is refused at
    construction naming the device type; float32 and tf32 do not use autocast and build."""
    import torch

    from vae_common.errors import DeviceError
    from vae_torch.trainer import Trainer

    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: False)
    with pytest.raises(DeviceError, match=r"precision 'bf16' needs torch.autocast on cpu"):
        Trainer(CONFIG, device="cpu", precision="bf16")
    for precision in ("float32", "tf32"):
        assert Trainer(CONFIG, device="cpu", precision=precision).precision == precision


# -- torch: the step functions -------------------------------------------------------------------


def _torch_model():
    import vae_torch

    model = vae_torch.build_model(CONFIG, "float64")
    vae_torch.from_canonical(model, init_canonical(CONFIG, 3, "float64"))
    return model


def _torch_batches(steps: int):
    import torch

    rng = np.random.default_rng(4)
    xs = torch.as_tensor(rng.uniform(0, 1, (steps, 2) + CONFIG.input_shape))
    return xs, torch.as_tensor(rng.standard_normal((steps, 2, CONFIG.latent_dim)))


def test_torch_run_steps_numbers_its_steps_from_first():
    """``make_run_steps``' ``run(..., first)`` numbers its steps first, first + 1, ...: five
    steps under a KL warm-up are the same run as two steps numbered from 0 followed by three
    numbered from 2."""
    import torch

    from vae_torch.train import make_optimizer, make_run_steps

    train = TrainConfig(lr=1e-2, warmup_steps=8)
    xs, eps = _torch_batches(5)
    whole, split = _torch_model(), _torch_model()
    run = make_run_steps(whole, train)
    want = run(make_optimizer(whole, train), xs, eps, 0)
    run = make_run_steps(split, train)
    optimizer = make_optimizer(split, train)
    got = torch.cat([run(optimizer, xs[:2], eps[:2], 0), run(optimizer, xs[2:], eps[2:], 2)])
    assert torch.equal(got, want)
    for a, b in zip(whole.parameters(), split.parameters(), strict=True):
        assert torch.equal(a, b)


def test_torch_steps_do_not_check_pixel_values(monkeypatch):
    """The training steps (plain, and the module DDP wraps) never check x's values: that
    reads them on the host, a device sync per step; the trainer checks its data once."""
    import vae_torch.input_checks
    import vae_torch.losses
    from vae_torch.train import _Objective, make_optimizer, make_train_step

    def refuse(*args):
        raise AssertionError("a training step checked x's values")

    monkeypatch.setattr(vae_torch.input_checks, "check_pixel_values", refuse)
    model, train = _torch_model(), TrainConfig(lr=1e-2)
    xs, eps = _torch_batches(1)
    make_train_step(model, train)(make_optimizer(model, train), xs[0], eps[0], 0)
    _Objective(model, 0.0)(xs[0], eps[0], 1.0)
    with pytest.raises(AssertionError, match="checked x's values"):  # the stand-in is in place
        vae_torch.losses.objective(model, None, xs[0], eps[0])
