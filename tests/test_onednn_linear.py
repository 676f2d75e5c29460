"""``vae_torch._onednn``: the dense layers' products through oneDNN for eager float32 on the CPU.

Against numpy in float64 (an independent reference for the values and all three gradients),
against ``F.linear``, and where it must not apply: float64, autocast, ``torch.func``
transforms, ``torch.compile`` tracing, ``cpu_linear("blas")``. The layers keep
``nn.Linear``'s parameters, and the eager Trainer's steps run through it, to the BLAS run's
losses up to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vae_common.compare import TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_torch import _onednn
from vae_torch._layers import Linear
from vae_torch.model import build_model
from vae_torch.train import Trainer

F32 = TOLERANCES["float32"]

pytestmark = pytest.mark.skipif(not _onednn.available(), reason="this torch has no oneDNN")


def _layer(n_in: int, n_out: int, seed: int = 0) -> tuple[Linear, torch.Tensor]:
    torch.manual_seed(seed)
    layer = Linear(n_in, n_out)
    return layer, torch.randn(33, n_in)


@pytest.fixture
def calls(monkeypatch) -> list[tuple[int, ...]]:
    """The input shapes of every call of the oneDNN op ``linear`` makes."""
    made: list[tuple[int, ...]] = []
    real = _onednn._onednn_linear

    def spied(x, weight, bias):
        made.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(_onednn, "_onednn_linear", spied)
    return made


@pytest.mark.parametrize("n_in, n_out", [(17, 9), (1, 5), (400, 20)])
def test_values_and_gradients_are_numpys(n_in, n_out, calls):
    layer, x = _layer(n_in, n_out)
    x.requires_grad_(True)
    g = torch.randn(33, n_out)
    y = layer(x)
    (y * g).sum().backward()
    assert calls == [(33, n_in)]
    x64, w64, b64, g64 = (t.detach().double().numpy() for t in (x, layer.weight, layer.bias, g))
    want = {
        "y": x64 @ w64.T + b64,
        "dx": g64 @ w64,
        "dW": g64.T @ x64,
        "db": g64.sum(0),
    }
    got = {"y": y, "dx": x.grad, "dW": layer.weight.grad, "db": layer.bias.grad}
    for name, value in got.items():
        assert value.dtype == torch.float32
        assert rel_diff(value.detach().double().numpy(), want[name]) <= F32, name


def test_no_input_gradient_where_the_input_needs_none(calls):
    layer, x = _layer(17, 9)
    layer(x).sum().backward()
    assert calls and x.grad is None
    torch.testing.assert_close(layer.bias.grad, torch.full((9,), 33.0))


def test_it_is_f_linear_up_to_float32_rounding():
    layer, x = _layer(64, 48)
    with torch.no_grad():
        ours = layer(x)
        with _onednn.cpu_linear("blas"):
            assert not _onednn.applies(x, layer.weight, layer.bias)
            blas = layer(x)
        assert _onednn.applies(x, layer.weight, layer.bias)
        want = F.linear(x, layer.weight, layer.bias)
    assert rel_diff(ours.numpy(), want.numpy()) <= F32
    assert torch.equal(blas, want)


def test_where_it_does_not_apply_it_is_f_linear(calls):
    layer, x = _layer(17, 9)
    # float64: oneDNN's linear is float32 here.
    layer64 = Linear(17, 9).double()
    assert torch.equal(layer64(x.double()), F.linear(x.double(), layer64.weight, layer64.bias))
    # autocast: F.linear follows its casts (bf16 out).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    # a 3-d input
    assert layer(x[None]).shape == (1, 33, 9)
    assert calls == []


def test_under_torch_func_it_is_f_linear(calls):
    layer, x = _layer(17, 9)
    params = dict(layer.named_parameters())

    def loss(p):
        return torch.func.functional_call(layer, p, (x,)).square().sum()

    def reference(p):
        return F.linear(x, p["weight"], p["bias"]).square().sum()

    grads = torch.func.grad(loss)(params)
    want = torch.func.grad(reference)(params)
    for name in params:
        assert torch.equal(grads[name], want[name]), name
    # Also when torch.compile traces torch.func.grad (inductor's own sums: float32 rounding).
    compiled = torch.compile(torch.func.grad(loss), fullgraph=True)
    for name, value in compiled(params).items():
        assert rel_diff(value.detach().numpy(), want[name].detach().numpy()) <= F32, name
    assert calls == []


def test_under_torch_compile_it_is_f_linear(calls):
    layer, x = _layer(17, 9)
    compiled = torch.compile(lambda x: layer(x), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias))
    assert calls == []


def test_cpu_linear_takes_a_known_kind_and_restores_the_last():
    assert _onednn.cpu_linear_kind() == "onednn"
    with pytest.raises(
        ConfigError, match=r"cpu_linear kind must be one of \['onednn', 'blas'\], got 'mkl'"
    ):
        with _onednn.cpu_linear("mkl"):
            pass
    with pytest.raises(RuntimeError, match="inside"):
        with _onednn.cpu_linear("blas"):
            assert _onednn.cpu_linear_kind() == "blas"
            raise RuntimeError("inside")
    assert _onednn.cpu_linear_kind() == "onednn"


def test_the_model_keeps_nn_linear_parameters():
    model = build_model(VAEConfig(input_shape=(1, 4, 4), hidden=(6,), latent_dim=2), "float32")
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(dense) == 5 and all(isinstance(m, Linear) for m in dense)
    assert "encoder.hidden.0.weight" in model.state_dict()


def test_the_eager_trainer_steps_through_it_to_the_blas_losses(calls):
    config = VAEConfig(input_shape=(1, 4, 4), hidden=(6,), latent_dim=2)
    rng = np.random.default_rng(0)
    xs = rng.random((4, 8, 1, 4, 4), dtype=np.float32)
    eps = rng.standard_normal((4, 8, 2)).astype(np.float32)
    weights = init_canonical(config, seed=0, dtype="float32")
    losses = {}
    for kind in ("onednn", "blas"):
        with _onednn.cpu_linear(kind):
            trainer = Trainer(config, TrainConfig(lr=0.01), "float32", device="cpu")
            trainer.load_state_dict(weights)
            losses[kind] = trainer.run_steps(xs, eps)
            # 5 dense layers per step (the encoder's hidden, mean and logvar, the decoder's
            # hidden and out), each through oneDNN; none under "blas".
            assert len(calls) == 4 * 5, (kind, calls)
    assert rel_diff(losses["onednn"], losses["blas"]) <= F32
