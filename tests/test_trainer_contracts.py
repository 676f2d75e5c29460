"""Contracts of the shared trainer plumbing (``vae_common.trainer``, ``trainer_checks``) at
their edges, in both backends: each test pins an edge a generic mutation run found unpinned.

Tiny models in float64 on the CPU, a few steps each.
"""

from __future__ import annotations

import numpy as np
import pytest

from vae_common.config import VAEConfig
from vae_common.errors import ConfigError
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
