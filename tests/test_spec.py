"""The canonical parameter spec: names and shapes, agreement with torch and the JAX table."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import vae_jax
import vae_torch
from vae_common.checkpoint import CheckpointError
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical, param_spec, spec_by_name

DEFAULT_MLP = [
    ("encoder.hidden.0.weight", (400, 784)),
    ("encoder.hidden.0.bias", (400,)),
    ("encoder.mean.weight", (20, 400)),
    ("encoder.mean.bias", (20,)),
    ("encoder.logvar.weight", (20, 400)),
    ("encoder.logvar.bias", (20,)),
    ("decoder.hidden.0.weight", (400, 20)),
    ("decoder.hidden.0.bias", (400,)),
    ("decoder.out.weight", (784, 400)),
    ("decoder.out.bias", (784,)),
]

MLP_CONFIGS = [
    VAEConfig(),
    VAEConfig(input_shape=(2, 6, 5), hidden=(7, 3), latent_dim=4, likelihood="gaussian"),
    VAEConfig(input_shape=(1, 4, 4), hidden=(), latent_dim=1),
]
IDS = ["784-400-20", "two-hidden", "no-hidden"]


def test_default_mlp_has_exactly_these_ten_tensors():
    specs = param_spec(VAEConfig())
    assert [(s.name, s.shape) for s in specs] == DEFAULT_MLP
    kinds = {s.name: s.kind for s in specs}
    assert all(kinds[n] == ("bias" if n.endswith("bias") else "linear_weight") for n in kinds)
    assert {s.name: s.fan_in for s in specs}["decoder.out.weight"] == 400
    assert set(spec_by_name(VAEConfig())) == {n for n, _ in DEFAULT_MLP}


def test_two_hidden_layers_mirror_in_the_decoder():
    cfg = VAEConfig(input_shape=(2, 6, 5), hidden=(7, 3), latent_dim=4)
    assert [(s.name, s.shape) for s in param_spec(cfg)] == [
        ("encoder.hidden.0.weight", (7, 60)),
        ("encoder.hidden.0.bias", (7,)),
        ("encoder.hidden.1.weight", (3, 7)),
        ("encoder.hidden.1.bias", (3,)),
        ("encoder.mean.weight", (4, 3)),
        ("encoder.mean.bias", (4,)),
        ("encoder.logvar.weight", (4, 3)),
        ("encoder.logvar.bias", (4,)),
        ("decoder.hidden.0.weight", (3, 4)),
        ("decoder.hidden.0.bias", (3,)),
        ("decoder.hidden.1.weight", (7, 3)),
        ("decoder.hidden.1.bias", (7,)),
        ("decoder.out.weight", (60, 7)),
        ("decoder.out.bias", (60,)),
    ]


@pytest.mark.parametrize("cfg", MLP_CONFIGS, ids=IDS)
def test_spec_is_the_torch_state_dict(cfg):
    model = vae_torch.build_model(cfg, "float32")
    state = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [
        (s.name, s.shape) for s in param_spec(cfg)
    ]
    # fan_in is what torch's default initialisation uses for each layer.
    for s in param_spec(cfg):
        weight = state[s.name.rsplit(".", 1)[0] + ".weight"]
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(weight)
        assert s.fan_in == fan_in, s.name


def test_conv_spec_matches_torch_layer_shapes_and_fan_in():
    cfg = VAEConfig(
        input_shape=(3, 16, 8), hidden=(32,), latent_dim=5, arch="conv", conv_channels=(8, 16)
    )
    specs = spec_by_name(cfg)
    assert [s.name for s in param_spec(cfg)] == [
        "encoder.conv.0.weight",
        "encoder.conv.0.bias",
        "encoder.conv.1.weight",
        "encoder.conv.1.bias",
        "encoder.hidden.0.weight",
        "encoder.hidden.0.bias",
        "encoder.mean.weight",
        "encoder.mean.bias",
        "encoder.logvar.weight",
        "encoder.logvar.bias",
        "decoder.hidden.0.weight",
        "decoder.hidden.0.bias",
        "decoder.project.weight",
        "decoder.project.bias",
        "decoder.deconv.0.weight",
        "decoder.deconv.0.bias",
        "decoder.deconv.1.weight",
        "decoder.deconv.1.bias",
    ]
    layers = {
        "encoder.conv.0": torch.nn.Conv2d(3, 8, 4, 2, 1),
        "encoder.conv.1": torch.nn.Conv2d(8, 16, 4, 2, 1),
        "encoder.hidden.0": torch.nn.Linear(16 * 4 * 2, 32),
        "decoder.project": torch.nn.Linear(32, 16 * 4 * 2),
        "decoder.deconv.0": torch.nn.ConvTranspose2d(16, 8, 4, 2, 1),
        "decoder.deconv.1": torch.nn.ConvTranspose2d(8, 3, 4, 2, 1),
    }
    for prefix, layer in layers.items():
        for leaf in ("weight", "bias"):
            s = specs[f"{prefix}.{leaf}"]
            assert s.shape == tuple(getattr(layer, leaf).shape), s.name
            fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
            assert s.fan_in == fan_in, s.name
    assert specs["encoder.conv.0.weight"].kind == "conv_weight"
    assert specs["decoder.deconv.1.weight"].kind == "conv_transpose_weight"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_canonical_is_seeded_and_in_torch_default_bounds(dtype):
    cfg = MLP_CONFIGS[1]
    a, b = init_canonical(cfg, 0, dtype), init_canonical(cfg, 0, dtype)
    c = init_canonical(cfg, 1, dtype)
    assert list(a) == [s.name for s in param_spec(cfg)]
    for s in param_spec(cfg):
        assert a[s.name].shape == s.shape and a[s.name].dtype == np.dtype(dtype)
        assert np.array_equal(a[s.name], b[s.name])
        assert not np.array_equal(a[s.name], c[s.name])
        assert np.all(np.abs(a[s.name]) <= 1 / np.sqrt(s.fan_in))


@pytest.mark.parametrize("cfg", MLP_CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jax_conversion_round_trips_bit_exactly(cfg, dtype):
    model = vae_jax.build_model(cfg, dtype)
    state = init_canonical(cfg, seed=2, dtype=dtype)
    params = vae_jax.from_canonical(model, state)
    back = vae_jax.to_canonical(model, params)
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        assert np.array_equal(back[name], value), name
    # The converted tree has the structure and shapes of a freshly initialised Flax model.
    fresh = jax.eval_shape(lambda: vae_jax.init_params(model, jax.random.key(0)))
    shapes = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), params)
    assert shapes == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), fresh)


def test_jax_dense_kernel_is_the_transposed_torch_weight():
    cfg = MLP_CONFIGS[1]
    model = vae_jax.build_model(cfg, "float64")
    state = init_canonical(cfg, seed=3)
    params = vae_jax.from_canonical(model, state)
    kernel = params["encoder"]["hidden_1"]["kernel"]
    assert np.array_equal(kernel, state["encoder.hidden.1.weight"].T)
    assert np.array_equal(params["decoder"]["out"]["bias"], state["decoder.out.bias"])
    table = {e.name: e for e in vae_jax.conversion_table(cfg)}
    assert table["encoder.hidden.1.weight"].path == ("encoder", "hidden_1", "kernel")
    assert table["encoder.hidden.1.weight"].permutation == (1, 0)


@pytest.mark.parametrize("cfg", MLP_CONFIGS, ids=IDS)
def test_the_flax_parameter_tree_converts_to_the_spec(cfg):
    # The tree the Flax module itself declares (shapes only: no slow initialisation needed).
    model = vae_jax.build_model(cfg, "float32")
    tree = jax.eval_shape(lambda: vae_jax.init_params(model, jax.random.key(1)))
    params = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), tree)
    state = vae_jax.to_canonical(model, params)
    assert [(k, v.shape, v.dtype) for k, v in state.items()] == [
        (s.name, s.shape, np.float32) for s in param_spec(cfg)
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_conversion_round_trips_bit_exactly(dtype):
    cfg = MLP_CONFIGS[1]
    model = vae_torch.build_model(cfg, dtype)
    state = init_canonical(cfg, seed=4, dtype=dtype)
    vae_torch.from_canonical(model, state)
    back = vae_torch.to_canonical(model, None)
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
        assert np.array_equal(model.state_dict()[name].numpy(), value), name


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_bad_states_are_rejected_naming_the_tensor(backend):
    cfg = MLP_CONFIGS[1]
    mod = vae_jax if backend == "jax" else vae_torch
    model = mod.build_model(cfg, "float64")
    good = init_canonical(cfg)
    missing = {k: v for k, v in good.items() if k != "decoder.hidden.1.bias"}
    with pytest.raises(CheckpointError, match=r"missing.*decoder\.hidden\.1\.bias"):
        mod.from_canonical(model, missing)
    with pytest.raises(CheckpointError, match=r"unexpected.*encoder\.extra\.weight"):
        mod.from_canonical(model, {**good, "encoder.extra.weight": np.zeros(3)})
    transposed = {**good, "encoder.mean.weight": good["encoder.mean.weight"].T}
    with pytest.raises(CheckpointError, match=r"encoder\.mean\.weight.*\(3, 4\).*\(4, 3\)"):
        mod.from_canonical(model, transposed)
