"""Bad arrays and settings are refused the same way by both backends: the same error class and
the same message (the rules live once, in ``vae_common.checks``)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vae_jax
import vae_torch
from vae_common import checks
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError, DataError, ShapeError
from vae_common.spec import init_canonical

CFG = VAEConfig(input_shape=(1, 2, 3), hidden=(4,), latent_dim=2)
GAUSSIAN = CFG.replace(likelihood="gaussian")
B = 3


class Side:
    """One backend's model (float64) with canonical weights, called by function name."""

    def __init__(self, backend: str, config: VAEConfig = CFG) -> None:
        self.backend = backend
        self.mod = vae_jax if backend == "jax" else vae_torch
        state = init_canonical(config, seed=0)
        self.model = self.mod.build_model(config, "float64")
        if backend == "jax":
            self.params = vae_jax.from_canonical(self.model, state)
        else:
            vae_torch.from_canonical(self.model, state)
            self.params = None

    def __call__(self, fn: str, *args, **kwargs):
        return getattr(self.mod, fn)(self.model, self.params, *args, **kwargs)

    def array(self, a):
        """``a`` as this backend's array (the pure functions take their backend's arrays)."""
        return jnp.asarray(a) if self.backend == "jax" else torch.as_tensor(np.asarray(a))


def problem(batch: int = B):
    rng = np.random.default_rng(0)
    return rng.random((batch, *CFG.input_shape)), rng.normal(size=(batch, CFG.latent_dim))


def scalar(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def refusal(call):
    """``(error class, message)`` of ``call()``; fails if it returns."""
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


def assert_same_refusal(make_call, error, match, config=CFG):
    """``make_call(side)`` raises ``error`` matching ``match`` with one message in both."""
    got = {b: refusal(lambda b=b: make_call(Side(b, config))) for b in ("jax", "torch")}
    assert got["jax"] == got["torch"], got
    cls, message = got["jax"]
    assert cls is error, got
    assert re.search(match, message), message


# -- dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "complex128", "complex64"])
def test_eps_of_a_non_float_dtype_is_refused(dtype):
    x, eps = problem()
    bad = eps.astype(dtype)
    for fn in ("loss", "elbo_terms", "negative_elbo", "objective"):
        assert_same_refusal(
            lambda s, fn=fn: s(fn, x, bad),
            ShapeError,
            rf"^eps must be floating point \(float16, bfloat16, float32, float64; not "
            rf"integer, bool or complex\), got dtype {dtype}$",
        )
    assert_same_refusal(
        lambda s: s("negative_iwae_bound", x, np.stack([bad, bad])),
        ShapeError,
        f"eps must be floating point .* got dtype {dtype}$",
    )


@pytest.mark.parametrize("dtype", ["complex128", "int64", "bool"])
def test_x_of_a_non_float_dtype_is_refused(dtype):
    x, eps = problem()
    bad = (x + 1j * x).astype(dtype) if dtype.startswith("complex") else (x > 0.5).astype(dtype)
    for fn, args in (("loss", (bad, eps)), ("encode", (bad,))):
        assert_same_refusal(
            lambda s, fn=fn, args=args: s(fn, *args),
            ShapeError,
            f"^x must be floating point .* got dtype {dtype}$",
        )


def test_z_of_a_non_float_dtype_is_refused():
    assert_same_refusal(
        lambda s: s("decode", np.zeros((B, CFG.latent_dim), np.int64)),
        ShapeError,
        "^z must be floating point .* got dtype int64$",
    )


def test_every_float_input_dtype_is_accepted():
    x, eps = problem()
    for dtype in ("float16", "float32", "float64"):
        values = {}
        for backend in ("jax", "torch"):
            s = Side(backend)
            values[backend] = scalar(s("loss", x.astype(dtype), eps.astype(dtype)))
        assert np.isfinite(values["jax"]) and values["jax"] == pytest.approx(values["torch"])


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -1.0, -1e-9])
def test_bad_beta_is_refused(value):
    x, eps = problem()
    for fn in ("loss", "negative_elbo", "objective"):
        assert_same_refusal(
            lambda s, fn=fn: s(fn, x, eps, beta=value),
            ConfigError,
            rf"^beta must be a finite non-negative number, got {value!r}$",
        )
    # free_bits > 0 takes another path through objective: beta is checked there too.
    assert_same_refusal(
        lambda s: s("objective", x, eps, beta=value, free_bits=0.5),
        ConfigError,
        "^beta must be a finite non-negative number",
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_bad_free_bits_is_refused(value):
    x, eps = problem()
    assert_same_refusal(
        lambda s: s("objective", x, eps, free_bits=value),
        ConfigError,
        rf"^free_bits must be a finite non-negative number, got {value!r}$",
    )


def test_beta_given_as_an_array_is_checked_by_value_and_must_be_a_scalar():
    x, eps = problem()
    assert_same_refusal(
        lambda s: s("loss", x, eps, beta=s.array(np.float64("nan"))),
        ConfigError,
        r"^beta must be a finite non-negative number, got nan$",
    )
    assert_same_refusal(
        lambda s: s("loss", x, eps, beta=s.array(np.ones(B))),
        ConfigError,
        r"^beta must be a number \(a scalar\), got an array of shape \(3,\)$",
    )
    assert_same_refusal(
        lambda s: s("loss", x, eps, beta=1 + 2j),
        ConfigError,
        r"^beta must be a real number, got \(1\+2j\)$",
    )
    for backend in ("jax", "torch"):
        s = Side(backend)
        zero = scalar(s("loss", x, eps, beta=s.array(np.float64(0.0))))
        assert zero == pytest.approx(scalar(s("loss", x, eps, beta=0.0)))


def test_bad_gaussian_std_is_refused():
    x = np.zeros((B, 4))
    for std in (0.0, -1.0, float("nan")):
        assert_same_refusal(
            lambda s, std=std: s.mod.gaussian_log_likelihood(s.array(x), s.array(x), std),
            ConfigError,
            rf"^std must be a finite positive number, got {std!r}$",
        )


# -- values of x -------------------------------------------------------------------------------


def out_of_range_inputs():
    """``(images, shown lo, shown hi)``: far out, below 0, and 1e-6 above 1 (not shown as 1)."""
    x, _ = problem()
    nudged = x.copy()
    nudged[0, 0, 0, 0] = 1.000001
    return [
        (x * 3, f"{3 * x.min():g}", f"{3 * x.max():g}"),
        (x - 0.5, f"{x.min() - 0.5:g}", f"{x.max() - 0.5:g}"),
        (nudged, f"{x.min():g}", "1.000001"),
    ]


@pytest.mark.parametrize("case", [0, 1, 2], ids=["times-3", "minus-half", "one-plus-1e-6"])
def test_x_outside_the_unit_interval_is_refused_for_the_bernoulli_likelihood(case):
    _, eps = problem()
    bad, lo, hi = out_of_range_inputs()[case]
    message = (
        rf"^x has values in \[{re.escape(lo)}, {re.escape(hi)}\]; the Bernoulli likelihood "
        r"needs values in \[0, 1\]$"
    )
    for fn, args in (
        ("loss", (bad, eps)),
        ("elbo_terms", (bad, eps)),
        ("negative_elbo", (bad, eps)),
        ("objective", (bad, eps)),
        ("negative_iwae_bound", (bad, np.stack([eps, eps]))),
    ):
        assert_same_refusal(lambda s, fn=fn, args=args: s(fn, *args), DataError, message)


def test_the_gaussian_likelihood_accepts_any_finite_values():
    x, eps = problem()
    for backend in ("jax", "torch"):
        s = Side(backend, GAUSSIAN)
        assert np.isfinite(scalar(s("loss", x * 40 - 20, eps)))


@pytest.mark.parametrize("config", [CFG, GAUSSIAN], ids=["bernoulli", "gaussian"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_is_refused_for_both_likelihoods(config, bad):
    x, eps = problem()
    x[1, 0, 1, 2] = bad
    assert_same_refusal(
        lambda s: s("loss", x, eps), DataError, "^x contains NaN or Inf values$", config
    )


def test_the_value_rule_is_the_dataset_rule():
    # The loss functions and vae_common.data.validate_images apply one rule, one message.
    from vae_common.data import validate_images

    x, eps = problem()
    with pytest.raises(DataError) as from_data:
        validate_images(x * 2, "bernoulli", name="x")
    got = refusal(lambda: Side("jax")("loss", x * 2, eps))
    assert got == (DataError, str(from_data.value))


def test_check_values_false_skips_only_the_value_check():
    x, eps = problem()
    for backend in ("jax", "torch"):
        s = Side(backend)
        value = s("objective", x * 3, eps, check_values=False)
        assert np.isfinite(scalar(value))
        with pytest.raises(ShapeError):
            s("objective", x[:, :, :1], eps, check_values=False)
        with pytest.raises(ConfigError):
            s("objective", x, eps, beta=-1.0, check_values=False)


def test_jit_checks_shapes_and_concrete_values_but_not_traced_values():
    x, eps = problem()
    s = Side("jax")
    traced = jax.jit(lambda p, x, e: vae_jax.loss(s.model, p, x, e))
    # Shapes are static: refused while tracing, with the eager message.
    with pytest.raises(ShapeError, match=r"^x has shape \(3, 1, 3, 2\)"):
        traced(s.params, x.reshape(B, 1, 3, 2), eps)
    with pytest.raises(ShapeError, match="empty batch"):
        traced(s.params, x[:0], eps[:0])
    # A traced x cannot be inspected: not checked (the trainers check their data up front).
    assert np.isfinite(float(traced(s.params, x * 3, eps)))
    # A concrete x closed over by the jitted function is checked.
    closed = jax.jit(lambda p: vae_jax.loss(s.model, p, x * 3, eps))
    with pytest.raises(DataError, match="Bernoulli"):
        closed(s.params)
    # A traced beta is not checked either; a Python beta is, while tracing.
    assert np.isfinite(float(jax.jit(lambda b: vae_jax.loss(s.model, s.params, x, eps, b))(-1.0)))
    with pytest.raises(ConfigError, match="beta"):
        jax.jit(lambda p: vae_jax.loss(s.model, p, x, eps, beta=-1.0))(s.params)


def test_torch_func_transforms_skip_the_value_checks_of_wrapped_tensors():
    x, eps = problem()
    s = Side("torch")

    def one(xi):
        return vae_torch.loss(s.model, None, xi[None], torch.as_tensor(eps[:1]))

    # Under vmap x is a wrapped tensor whose values cannot be read: no check, no error.
    out = torch.func.vmap(one)(torch.as_tensor(x))
    assert out.shape == (B,) and torch.isfinite(out).all()


# -- empty batches -----------------------------------------------------------------------------


def test_an_empty_batch_is_refused():
    x, eps = problem()
    empty = r"^x has shape \(0, 1, 2, 3\): an empty batch; give at least one example$"
    for fn, args in (
        ("loss", (x[:0], eps[:0])),
        ("elbo_terms", (x[:0], eps[:0])),
        ("objective", (x[:0], eps[:0])),
        ("negative_iwae_bound", (x[:0], np.zeros((2, 0, 2)))),
        ("encode", (x[:0],)),
    ):
        assert_same_refusal(lambda s, fn=fn, args=args: s(fn, *args), ShapeError, empty)
    assert_same_refusal(
        lambda s: s("decode", np.zeros((0, 2))),
        ShapeError,
        r"^z has shape \(0, 2\): an empty batch",
    )
    assert_same_refusal(
        lambda s: s("negative_iwae_bound", x, np.zeros((0, B, 2))),
        ShapeError,
        r"^eps has shape \(0, 3, 2\): K = 0 noise samples; give at least one$",
    )


# -- shapes of the array functions --------------------------------------------------------------


def pure(fn, *arrays, **kwargs):
    return lambda s: getattr(s.mod, fn)(*(s.array(a) for a in arrays), **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            pure("gaussian_kl", np.zeros((3, 2)), np.zeros((4, 2))),
            r"^gaussian_kl: logvar has shape \(4, 2\) but must be \(3, 2\), the shape of mean$",
        ),
        (
            pure("gaussian_kl", np.zeros(2), np.zeros(2)),
            r"^gaussian_kl: mean has shape \(2,\) but must be \(B, L\)$",
        ),
        (
            pure("gaussian_kl_per_dim", np.zeros((3, 2)), np.zeros((3, 5))),
            r"^gaussian_kl_per_dim: logvar has shape \(3, 5\) but must be \(3, 2\)",
        ),
        (
            pure("gaussian_kl_per_dim", np.zeros((2, 3, 2)), np.zeros((2, 3, 2))),
            r"^gaussian_kl_per_dim: mean has shape \(2, 3, 2\) but must be \(B, L\)$",
        ),
        (
            pure("bernoulli_log_likelihood", np.zeros((3, 6)), np.zeros((3, 5))),
            r"^bernoulli_log_likelihood: logits has shape \(3, 5\) but must be \(3, 6\), the "
            r"shape of x$",
        ),
        (
            pure("bernoulli_log_likelihood", np.zeros(3), np.zeros(3)),
            r"^bernoulli_log_likelihood: x has shape \(3,\) but must be \(B, \.\.\.\)",
        ),
        (
            pure("gaussian_log_likelihood", np.zeros((3, 1, 2, 3)), np.zeros((1, 2, 3))),
            r"^gaussian_log_likelihood: mean has shape \(1, 2, 3\) but must be \(3, 1, 2, 3\)",
        ),
        (
            pure("reparameterize", np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 4))),
            r"^reparameterize: eps has shape \(3, 4\) but must be \(3, 2\) or \(K, 3, 2\)",
        ),
        (
            pure("reparameterize", np.zeros((3, 2)), np.zeros((3, 1)), np.zeros((3, 2))),
            r"^reparameterize: logvar has shape \(3, 1\) but must be \(3, 2\)",
        ),
        (
            pure("reparameterize", np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((2, 2, 3, 2))),
            r"^reparameterize: eps has shape \(2, 2, 3, 2\)",
        ),
    ],
    ids=[
        "kl-batch",
        "kl-1d",
        "kl-per-dim-latent",
        "kl-per-dim-3d",
        "bernoulli-pixels",
        "bernoulli-1d",
        "gaussian-batch",
        "reparameterize-eps",
        "reparameterize-logvar",
        "reparameterize-4d",
    ],
)
def test_mis_shaped_arrays_to_the_array_functions(call, match):
    assert_same_refusal(call, ShapeError, match)


def test_mis_shaped_arrays_to_the_model_functions():
    x, eps = problem()
    cases = [
        (lambda s: s("decode", np.zeros((B, 5))), r"^z has shape \(3, 5\) but the model expects"),
        (lambda s: s("decode", np.zeros(2)), r"^z has shape \(2,\) but the model expects"),
        (lambda s: s("encode", x[:, 0]), r"^x has shape \(3, 2, 3\) but the model expects"),
        (
            lambda s: s("negative_iwae_bound", x, eps),
            r"^negative_iwae_bound needs eps of shape \(K, B, L\), got \(3, 2\)$",
        ),
        (
            lambda s: s("negative_iwae_bound", x, np.zeros((2, B, 5))),
            r"^eps has shape \(2, 3, 5\) but must be \(3, 2\) or \(K, 3, 2\)",
        ),
        (
            lambda s: s("objective", x, np.stack([eps, eps]), free_bits=0.5),
            r"^objective with free_bits > 0 needs eps of shape \(B, L\), got \(2, 3, 2\)$",
        ),
    ]
    for call, match in cases:
        assert_same_refusal(call, ShapeError, match)


# -- the trainers' numpy entry points ------------------------------------------------------------


@pytest.fixture(scope="module")
def trainers():
    out = {}
    for backend, mod in (("jax", vae_jax), ("torch", vae_torch)):
        trainer = mod.Trainer(CFG, dtype="float64")
        trainer.load_state_dict(init_canonical(CFG, seed=0))
        out[backend] = trainer
    return out


def test_trainers_refuse_what_the_losses_refuse_before_any_cast(trainers):
    x, eps = problem()
    complex_x = x + 1j * x
    cases = [
        (lambda t: t.put_data(complex_x), ShapeError, "^x must be floating point .*complex128$"),
        (lambda t: t.evaluate(complex_x), ShapeError, "^x must be floating point"),
        (lambda t: t.reconstruct(complex_x), ShapeError, "^x must be floating point"),
        (lambda t: t.encode_mean(x.astype(np.int64)), ShapeError, "got dtype int64$"),
        (lambda t: t.sample(np.zeros((2, 2), bool)), ShapeError, "^z must be floating point"),
        (lambda t: t.sample(np.zeros((2, 3))), ShapeError, r"^z has shape \(2, 3\)"),
        (lambda t: t.put_data(x * 2), DataError, "Bernoulli likelihood needs values in"),
        (lambda t: t.evaluate(x - 1), DataError, "Bernoulli likelihood needs values in"),
        (lambda t: t.put_data(x[:, :, :1]), ShapeError, r"^x has shape \(3, 1, 1, 3\)"),
        (
            lambda t: t.run_steps(x[None] * 2, eps[None]),
            DataError,
            "^xs has values in .* Bernoulli",
        ),
        (
            lambda t: t.run_steps(x[None], eps[None].astype(np.int64)),
            ShapeError,
            "^eps must be floating point",
        ),
    ]
    for call, error, match in cases:
        got = {b: refusal(lambda b=b, call=call: call(trainers[b])) for b in trainers}
        assert got["jax"] == got["torch"], got
        assert got["jax"][0] is error and re.search(match, got["jax"][1])
    for trainer in trainers.values():
        assert trainer.step == 0, "a refused call must not take a step"


def test_checks_module_names_dtypes_of_every_framework():
    assert checks.dtype_name(np.dtype("complex64")) == "complex64"
    assert checks.dtype_name(torch.int32) == "int32"
    assert checks.dtype_name(jnp.zeros(1, jnp.bfloat16).dtype) == "bfloat16"
    assert set(checks.FLOAT_DTYPES) == {"float16", "bfloat16", "float32", "float64"}
