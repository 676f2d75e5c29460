"""The convolutional architecture in each backend: layouts, round trips, input checks, layer maths.

The layer maths is checked against direct numpy loops written from PyTorch's definitions of
``Conv2d`` and ``ConvTranspose2d`` (kernel 4, stride 2, padding 1), in float64, within
``TOLERANCES["float64"]``; cross-backend gradients are in ``parity_tests/test_parity_conv.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vae_jax
import vae_torch
from vae_common.compare import TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical, param_spec
from vae_jax._conv import conv_stride2, conv_transpose_stride2
from vae_jax.convert import PERMUTATIONS, conversion_table

TOL = TOLERANCES["float64"]

MNIST = VAEConfig(arch="conv", conv_channels=(32, 64), hidden=(256,))
CONFIGS = {
    "mnist-32-64": MNIST,
    "rgb32-three-layers": VAEConfig(
        input_shape=(3, 32, 32), arch="conv", conv_channels=(4, 6, 8), hidden=(16, 12), latent_dim=5
    ),
    "non-square-gaussian": VAEConfig(
        input_shape=(2, 8, 12),
        arch="conv",
        conv_channels=(3, 5),
        hidden=(7,),
        latent_dim=4,
        likelihood="gaussian",
    ),
    "no-hidden": VAEConfig(input_shape=(1, 8, 8), arch="conv", conv_channels=(4,), hidden=()),
}


def np_conv2d(x, weight, bias):
    """torch Conv2d(k=4, s=2, p=1) by its definition: x (B, C, H, W), weight (O, C, 4, 4)."""
    b, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((b, weight.shape[0], h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            window = padded[:, :, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4]
            out[:, :, i, j] = np.einsum("bckl,ockl->bo", window, weight)
    return out + bias[None, :, None, None]


def np_conv_transpose2d(x, weight, bias):
    """torch ConvTranspose2d(k=4, s=2, p=1) by its definition: x (B, I, H, W), weight (I, O, 4, 4).

    Input pixel (i, j) adds ``x[:, :, i, j] @ weight`` to the 4x4 block of rows 2i - 1 + ky and
    columns 2j - 1 + kx; padding 1 crops one row and column on each side.
    """
    b, _, h, w = x.shape
    full = np.zeros((b, weight.shape[1], 2 * h + 2, 2 * w + 2))
    for i in range(h):
        for j in range(w):
            full[:, :, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += np.einsum(
                "bi,iokl->bokl", x[:, :, i, j], weight
            )
    return full[:, :, 1:-1, 1:-1] + bias[None, :, None, None]


def np_conv_vae(state, config: VAEConfig, x, z):
    """The conv encoder on x and the conv decoder on z, in numpy: (mean, logvar, decoded)."""

    def dense(h, name):
        return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    h = x
    for i in range(len(config.conv_channels)):
        name = f"encoder.conv.{i}"
        h = np.maximum(np_conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"]), 0.0)
    h = h.reshape(h.shape[0], -1)
    for i in range(len(config.hidden)):
        h = np.maximum(dense(h, f"encoder.hidden.{i}"), 0.0)
    mean, logvar = dense(h, "encoder.mean"), dense(h, "encoder.logvar")
    h = z
    for i in range(len(config.hidden)):
        h = np.maximum(dense(h, f"decoder.hidden.{i}"), 0.0)
    h = np.maximum(dense(h, "decoder.project"), 0.0)
    h = h.reshape((z.shape[0],) + config.conv_output_shape)
    n = len(config.conv_channels)
    for i in range(n):
        name = f"decoder.deconv.{i}"
        h = np_conv_transpose2d(h, state[f"{name}.weight"], state[f"{name}.bias"])
        if i < n - 1:
            h = np.maximum(h, 0.0)
    return mean, logvar, h


def _flat(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        if hasattr(value, "items"):
            out.update(_flat(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_state_dict_is_the_spec(name):
    config = CONFIGS[name]
    model = vae_torch.build_model(config, "float64")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == [(s.name, s.shape) for s in param_spec(config)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_jax_params_are_the_table(name):
    config = CONFIGS[name]
    model = vae_jax.build_model(config, "float64")
    flat = _flat(vae_jax.init_params(model, jax.random.key(0)))
    table = conversion_table(config)
    assert sorted(flat) == sorted(e.path for e in table)
    for entry, spec in zip(table, param_spec(config), strict=True):
        want = tuple(spec.shape[i] for i in entry.permutation)
        assert flat[entry.path].shape == want, entry.name
        assert flat[entry.path].dtype == jnp.float64, entry.name
    kinds = {s.kind for s in param_spec(config)}
    assert {"conv_weight", "conv_transpose_weight"} <= kinds


def test_jax_init_draws_from_torch_default_distribution():
    model = vae_jax.build_model(MNIST, "float32")
    flat = _flat(vae_jax.init_params(model, jax.random.key(1)))
    for entry, spec in zip(conversion_table(MNIST), param_spec(MNIST), strict=True):
        values = np.asarray(flat[entry.path])
        bound = 1.0 / np.sqrt(spec.fan_in)
        assert np.max(np.abs(values)) <= bound, entry.name
        if values.size >= 256:  # uniform on (-bound, bound): the extremes come close to it
            assert np.max(np.abs(values)) > 0.9 * bound, entry.name
            assert abs(np.std(values) - bound / np.sqrt(3.0)) < 0.15 * bound, entry.name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trips_are_bit_exact(name, dtype):
    config = CONFIGS[name]
    jmodel = vae_jax.build_model(config, dtype)
    params = vae_jax.init_params(jmodel, jax.random.key(2))
    state = vae_jax.to_canonical(jmodel, params)
    again = _flat(vae_jax.from_canonical(jmodel, state))
    for path, value in _flat(params).items():
        assert np.array_equal(np.asarray(again[path]), np.asarray(value)), path
        assert again[path].dtype == value.dtype, path

    # canonical -> JAX -> canonical and canonical -> torch -> canonical leave every bit alone
    canonical = init_canonical(config, seed=3, dtype=dtype)
    tmodel = vae_torch.build_model(config, dtype)
    for back in (
        vae_jax.to_canonical(jmodel, vae_jax.from_canonical(jmodel, canonical)),
        vae_torch.to_canonical(tmodel, vae_torch.from_canonical(tmodel, canonical)),
    ):
        assert list(back) == list(canonical)
        for key, value in canonical.items():
            assert back[key].dtype == value.dtype, key
            assert np.array_equal(back[key], value), key

    # JAX -> torch -> JAX
    vae_torch.from_canonical(tmodel, state)
    through_torch = vae_torch.to_canonical(tmodel, None)
    for key, value in state.items():
        assert np.array_equal(through_torch[key], value), key


@pytest.mark.parametrize(
    "shape", [(2, 1, 32, 32), (2, 3, 28, 28), (2, 1, 28, 27), (1, 28, 28), (2, 784)]
)
@pytest.mark.parametrize("backend", [vae_jax, vae_torch])
def test_wrong_image_size_raises_shape_error_naming_both_shapes(backend, shape):
    model = backend.build_model(MNIST, "float64")
    params = vae_jax.init_params(model, jax.random.key(0)) if backend is vae_jax else None
    x = np.zeros(shape)
    eps = np.zeros((shape[0], MNIST.latent_dim))
    for call in (
        lambda: backend.encode(model, params, x),
        lambda: backend.loss(model, params, x, eps),
    ):
        with pytest.raises(backend.ShapeError) as info:
            call()
        message = str(info.value)
        assert str(shape) in message
        assert "1, 28, 28" in message


def test_numpy_conv_transpose_definition_matches_torch_functional():
    # The loop above is the definition; torch's own layer agreeing with it anchors the reference.
    rng = np.random.default_rng(4)
    x, w, b = rng.normal(size=(2, 3, 3, 5)), rng.normal(size=(3, 2, 4, 4)), rng.normal(size=2)
    want = np_conv_transpose2d(x, w, b)
    got = torch.nn.functional.conv_transpose2d(
        torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=2, padding=1
    ).numpy()
    assert want.shape == (2, 2, 6, 10)
    assert rel_diff(got, want) <= TOL


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 7)])
def test_one_conv_transpose_layer_matches_numpy_in_both_backends(size):
    rng = np.random.default_rng(5)
    c_in, c_out = 3, 2
    x = rng.normal(size=(2, c_in) + size)
    weight, bias = rng.normal(size=(c_in, c_out, 4, 4)), rng.normal(size=c_out)
    want = np_conv_transpose2d(x, weight, bias)
    assert want.shape == (2, c_out, 2 * size[0], 2 * size[1])

    # torch: the decoder's own ConvTranspose2d module, loaded with the canonical weight
    config = VAEConfig(input_shape=(c_out, 8, 8), arch="conv", conv_channels=(c_in,), hidden=())
    layer = vae_torch.build_model(config, "float64").decoder.deconv[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
        got_torch = layer(torch.tensor(x)).numpy()
    assert rel_diff(got_torch, want) <= TOL

    # JAX: the kernel through the declared permutation, NCHW -> NHWC -> NCHW around the layer
    kernel = jnp.asarray(weight.transpose(PERMUTATIONS["conv_transpose_weight"]))
    out = conv_transpose_stride2(jnp.asarray(x.transpose(0, 2, 3, 1)), kernel) + bias
    got_jax = np.asarray(out).transpose(0, 3, 1, 2)
    assert rel_diff(got_jax, want) <= TOL


def test_one_conv_layer_matches_numpy_in_both_backends():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 6, 10))
    weight, bias = rng.normal(size=(4, 3, 4, 4)), rng.normal(size=4)
    want = np_conv2d(x, weight, bias)
    config = VAEConfig(input_shape=(3, 6, 10), arch="conv", conv_channels=(4,), hidden=())
    layer = vae_torch.build_model(config, "float64").encoder.conv[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
        assert rel_diff(layer(torch.tensor(x)).numpy(), want) <= TOL
    kernel = jnp.asarray(weight.transpose(PERMUTATIONS["conv_weight"]))
    out = conv_stride2(jnp.asarray(x.transpose(0, 2, 3, 1)), kernel) + bias
    assert rel_diff(np.asarray(out).transpose(0, 3, 1, 2), want) <= TOL


@pytest.mark.parametrize("name", ["rgb32-three-layers", "non-square-gaussian", "no-hidden"])
def test_encode_and_decode_match_numpy_in_both_backends(name):
    config = CONFIGS[name]
    state = init_canonical(config, seed=7)
    rng = np.random.default_rng(8)
    x = rng.random((3,) + config.input_shape)
    z = rng.normal(size=(3, config.latent_dim))
    want = np_conv_vae(state, config, x, z)

    jmodel = vae_jax.build_model(config, "float64")
    jparams = vae_jax.from_canonical(jmodel, state)
    tmodel = vae_torch.build_model(config, "float64")
    vae_torch.from_canonical(tmodel, state)
    with torch.no_grad():
        got_torch = (*vae_torch.encode(tmodel, None, x), vae_torch.decode(tmodel, None, z))
    got_jax = (*vae_jax.encode(jmodel, jparams, x), vae_jax.decode(jmodel, jparams, z))
    for label, got in (("jax", got_jax), ("torch", got_torch)):
        for part, g, w in zip(("mean", "logvar", "decoded"), got, want, strict=True):
            g = np.asarray(g.numpy() if isinstance(g, torch.Tensor) else g)
            assert g.shape == w.shape, (label, part)
            assert rel_diff(g, w) <= TOL, (label, part, rel_diff(g, w))


def _conv_transpose_lhs_dilation(x, kernel):
    # The textbook form (a convolution of the 2x-dilated input with the flipped kernel), which
    # XLA:CPU runs slowly but autodiff differentiates without help: the reference for the VJP.
    return jax.lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1],
        (1, 1),
        ((2, 2), (2, 2)),
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _conv_autodiff(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


# (custom-VJP op, plain-autodiff reference, input shape from (B, h, w, I), output size factor)
OPS = {
    "conv_transpose": (conv_transpose_stride2, _conv_transpose_lhs_dilation, 1, 2),
    "conv": (conv_stride2, _conv_autodiff, 2, 0.5),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 3), (1, 1, 1, 2, 1), (3, 7, 7, 6, 5)])
def test_custom_vjp_equals_autodiff_of_the_plain_form(op, shape):
    fast, plain, in_scale, out_scale = OPS[op]
    b, h, w, c_in, c_out = shape
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(b, h * in_scale, w * in_scale, c_in)))
    kernel = jnp.asarray(rng.normal(size=(4, 4, c_in, c_out)))
    out_hw = (int(x.shape[1] * out_scale), int(x.shape[2] * out_scale))
    cotangent = jnp.asarray(rng.normal(size=(b, *out_hw, c_out)))
    out, vjp = jax.vjp(fast, x, kernel)
    want_out, want_vjp = jax.vjp(plain, x, kernel)
    assert out.shape == want_out.shape == cotangent.shape
    assert rel_diff(out, want_out) <= TOL
    for got, want, what in zip(vjp(cotangent), want_vjp(cotangent), ("dx", "dkernel"), strict=True):
        assert got.shape == want.shape, what
        assert rel_diff(got, want) <= TOL, what

    # the same under jit and vmap (K samples per example go through vmap in the losses)
    def loss_of(f):
        return lambda x, k: jnp.sum(f(x, k) * cotangent)

    batched = jax.jit(jax.vmap(jax.grad(loss_of(fast), argnums=(0, 1)), in_axes=(0, None)))
    got_dx, got_dk = batched(jnp.stack([x, 2 * x]), kernel)
    for i, scale in enumerate((1.0, 2.0)):
        want_dx, want_dk = jax.grad(loss_of(plain), argnums=(0, 1))(scale * x, kernel)
        assert rel_diff(got_dx[i], want_dx) <= TOL
        assert rel_diff(got_dk[i], want_dk) <= TOL
