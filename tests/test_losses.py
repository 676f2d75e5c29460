"""The maths of each loss term, in both backends, against numpy closed forms and known identities.

Float64 throughout (x64 is on, see conftest). Where two formulas for the same quantity are compared
the allowed difference is ``TOLERANCES["float64"]`` times the size of the summands the formula
adds (its rounding scale), so a property that holds in exact arithmetic is not failed by
cancellation that any float64 implementation would suffer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import vae_jax
import vae_torch
from vae_common import reference
from vae_common.compare import TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical

pytestmark = pytest.mark.usefixtures("ieee_subnormals")

TOL = TOLERANCES["float64"]
LOG_2PI = math.log(2 * math.pi)
PROPERTY = settings(max_examples=40, deadline=None)


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def both(fn_name, *args, **kwargs):
    """``vae_jax.fn(*args)`` and ``vae_torch.fn(*args)`` on float64 numpy inputs, as numpy."""
    j = getattr(vae_jax, fn_name)(*(jnp.asarray(a) for a in args), **kwargs)
    t = getattr(vae_torch, fn_name)(*(torch.as_tensor(a) for a in args), **kwargs)
    return {"jax": np.asarray(j), "torch": t.numpy()}


def assert_close(got, want, scale, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    assert np.all(err <= TOL * np.asarray(scale)), f"{what}: max error {err.max():.3e}"


# KL(q || prior)

LATENT = arrays(np.float64, (3, 4), elements=floats(-6, 6))


@PROPERTY
@given(mean=LATENT, logvar=LATENT)
def test_gaussian_kl_agrees_with_numpy_and_is_non_negative(mean, logvar):
    want = reference.gaussian_kl(mean, logvar)
    scale = 0.5 * np.sum(1 + np.abs(logvar) + mean**2 + np.exp(logvar), axis=-1)
    for backend, got in both("gaussian_kl", mean, logvar).items():
        assert got.shape == (3,)
        assert_close(got, want, scale, f"{backend} KL")
        assert np.all(got >= -TOL * scale), f"{backend} KL is negative: {got}"


@PROPERTY
@given(mean=LATENT)
def test_gaussian_kl_with_unit_variance_is_half_the_squared_mean(mean):
    logvar = np.zeros_like(mean)
    want = 0.5 * np.sum(mean**2, axis=-1)
    scale = 0.5 * np.sum(2 + mean**2, axis=-1)
    for backend, got in both("gaussian_kl", mean, logvar).items():
        assert_close(got, want, scale, f"{backend} KL")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gaussian_kl_is_exactly_zero_at_the_prior(dtype):
    zeros = np.zeros((2, 5), dtype)
    assert np.array_equal(reference.gaussian_kl(zeros, zeros), np.zeros(2))
    for backend, got in both("gaussian_kl", zeros, zeros).items():
        assert got.dtype == np.dtype(dtype), backend
        assert np.array_equal(got, np.zeros(2, dtype)), backend


def test_gaussian_kl_known_value():
    # KL(N(1, e^1) || N(0, 1)) per dimension = 0.5 * (e + 1 - 1 - 1) = (e - 1) / 2.
    mean, logvar = np.ones((1, 3)), np.ones((1, 3))
    for backend, got in both("gaussian_kl", mean, logvar).items():
        assert rel_diff(got, np.array([1.5 * (math.e - 1)])) <= TOL, backend


# Bernoulli

PIXELS = (2, 1, 3, 3)


@PROPERTY
@given(
    x=arrays(np.float64, PIXELS, elements=floats(0, 1)),
    logits=arrays(np.float64, PIXELS, elements=floats(-8, 8)),
)
def test_bernoulli_log_likelihood_is_minus_binary_cross_entropy(x, logits):
    bce = F.binary_cross_entropy(
        torch.sigmoid(torch.as_tensor(logits)), torch.as_tensor(x), reduction="none"
    )
    want = -bce.sum(dim=(1, 2, 3)).numpy()
    scale = np.sum(np.abs(logits) + 1, axis=(1, 2, 3))
    assert_close(reference.bernoulli_log_likelihood(x, logits), want, scale, "numpy")
    for backend, got in both("bernoulli_log_likelihood", x, logits).items():
        assert got.shape == (2,)
        assert_close(got, want, scale, backend)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bernoulli_log_likelihood_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 1e4, -1e4], [0.0, 60.0, -60.0, 3e38]], dtype).reshape(2, 1, 2, 2)
    x = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 1.0, 0.0, 0.0]], dtype).reshape(2, 1, 2, 2)
    # Exact values: log sigmoid(l) -> 0 and log(1 - sigmoid(l)) -> -l for huge l; log(1/2) at 0;
    # exp(-60) is below the rounding of either dtype. A naive log(sigmoid) would give -inf.
    want = np.array([-2e4, -math.log(2) - 3e38])
    for backend, got in both("bernoulli_log_likelihood", x, logits).items():
        assert np.all(np.isfinite(got)), f"{backend}: {got}"
        assert rel_diff(got, want) <= TOLERANCES[dtype], f"{backend}: {got}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bernoulli_gradient_is_finite_for_huge_logits(dtype):
    logits = np.array([1e4, -1e4, 1e4, -1e4, 0.0, 30.0], dtype).reshape(1, 1, 2, 3)
    x = np.array([1.0, 0.0, 0.0, 1.0, 0.25, 0.5], dtype).reshape(1, 1, 2, 3)
    # d/dl [x*l - softplus(l)] = x - sigmoid(l).
    want = x - 0.5 * (1 + np.tanh(logits.astype(np.float64) / 2))

    def jax_loss(lg):
        return jnp.sum(vae_jax.bernoulli_log_likelihood(jnp.asarray(x), lg))

    got_jax = np.asarray(jax.grad(jax_loss)(jnp.asarray(logits)))
    lt = torch.as_tensor(logits).requires_grad_(True)
    vae_torch.bernoulli_log_likelihood(torch.as_tensor(x), lt).sum().backward()
    for backend, got in {"jax": got_jax, "torch": lt.grad.numpy()}.items():
        assert np.all(np.isfinite(got)), backend
        assert rel_diff(got, want) <= TOLERANCES[dtype], f"{backend}: {got}"


# Gaussian


@PROPERTY
@given(
    x=arrays(np.float64, PIXELS, elements=floats(0, 1)),
    mean=arrays(np.float64, PIXELS, elements=floats(-3, 3)),
    std=floats(0.05, 5),
)
def test_gaussian_log_likelihood_agrees_with_numpy(x, mean, std):
    want = reference.gaussian_log_likelihood(x, mean, std)
    d = x[0].size
    sse = np.sum((x - mean) ** 2, axis=(1, 2, 3))
    scale = 0.5 * sse / std**2 + d * (abs(math.log(std)) + 0.5 * LOG_2PI)
    for backend, got in both("gaussian_log_likelihood", x, mean, std=std).items():
        assert got.shape == (2,)
        assert_close(got, want, scale, backend)


def test_gaussian_log_likelihood_with_unit_std_is_half_the_sum_of_squared_errors():
    rng = np.random.default_rng(0)
    x, mean = rng.random(PIXELS), rng.normal(size=PIXELS)
    d = x[0].size
    sse = np.sum((x - mean) ** 2, axis=(1, 2, 3))
    mse = F.mse_loss(torch.as_tensor(mean), torch.as_tensor(x), reduction="none")
    mse = mse.flatten(1).mean(dim=1).numpy()
    for backend, got in both("gaussian_log_likelihood", x, mean).items():
        assert rel_diff(got, -0.5 * sse - d / 2 * LOG_2PI) <= TOL, backend
        # Minimising -log p with std = 1 is minimising the MSE: -log p = D/2 * (MSE + log 2 pi).
        assert rel_diff(-got, d / 2 * (mse + LOG_2PI)) <= TOL, backend


def test_standard_normal_log_density_sums_the_last_axis():
    eps = np.random.default_rng(1).normal(size=(3, 2, 4))
    want = np.sum(-0.5 * eps**2 - 0.5 * LOG_2PI, axis=-1)
    for backend, got in both("standard_normal_log_density", eps).items():
        assert got.shape == (3, 2), backend
        assert rel_diff(got, want) <= TOL, backend


# Sampling


def test_reparameterize_broadcasts_over_samples():
    rng = np.random.default_rng(2)
    mean, logvar, eps = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(5, 4, 3))
    want = mean + np.exp(0.5 * logvar) * eps
    for backend, got in both("reparameterize", mean, logvar, eps).items():
        assert got.shape == (5, 4, 3), backend
        assert rel_diff(got, want) <= TOL, backend
    for backend, got in both("reparameterize", mean, logvar, eps[0]).items():
        assert got.shape == (4, 3), backend
        assert rel_diff(got, want[0]) <= TOL, backend


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sample_eps_shapes_dtypes_and_determinism(dtype):
    key = jax.random.key(0)
    a = vae_jax.sample_eps(key, (3, 64, 20), dtype)
    assert a.shape == (3, 64, 20) and a.dtype == jnp.dtype(dtype)
    assert np.array_equal(a, vae_jax.sample_eps(key, (3, 64, 20), dtype))
    assert not np.array_equal(a, vae_jax.sample_eps(jax.random.key(1), (3, 64, 20), dtype))

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    b = vae_torch.sample_eps(gen(0), (3, 64, 20), dtype)
    assert tuple(b.shape) == (3, 64, 20) and b.dtype == getattr(torch, dtype)
    assert b.device.type == "cpu"
    assert torch.equal(b, vae_torch.sample_eps(gen(0), [3, 64, 20], dtype))
    assert not torch.equal(b, vae_torch.sample_eps(gen(1), (3, 64, 20), dtype))
    for draws in (np.asarray(a, np.float64), b.double().numpy()):
        # 3840 standard normal draws: mean within 5 standard errors of 0, variance of 1.
        assert abs(draws.mean()) < 5 / math.sqrt(draws.size)
        assert abs(draws.var() - 1) < 5 * math.sqrt(2 / draws.size)


def test_sample_eps_rejects_other_dtypes():
    with pytest.raises(ValueError, match="dtype"):
        vae_jax.sample_eps(jax.random.key(0), (2, 2), "float16")
    with pytest.raises(ValueError, match="dtype"):
        vae_torch.sample_eps(torch.Generator(), (2, 2), "int32")


# The model-level objective, in both backends

CFG = VAEConfig(input_shape=(1, 2, 3), hidden=(3,), latent_dim=2)
GAUSSIAN_CFG = CFG.replace(likelihood="gaussian", gaussian_std=0.7)
BATCH = 4


class Side:
    """One backend with a float64 model holding ``init_canonical`` weights."""

    def __init__(self, name: str, config: VAEConfig):
        self.name, self.config = name, config
        self.jitted = {}
        state = init_canonical(config, seed=1)
        if name == "jax":
            self.mod = vae_jax
            self.model = vae_jax.build_model(config, "float64")
            self.params = vae_jax.from_canonical(self.model, state)
        else:
            self.mod = vae_torch
            self.model = vae_torch.build_model(config, "float64")
            vae_torch.from_canonical(self.model, state)
            self.params = None

    def __call__(self, fn_name, *args, **kwargs):
        fn = getattr(self.mod, fn_name)
        if self.name == "jax":
            # Jitted once per function and shape: much faster than op-by-op dispatch here.
            if fn_name not in self.jitted:
                self.jitted[fn_name] = jax.jit(
                    lambda p, *a, _fn=fn, **kw: _fn(self.model, p, *a, **kw),
                    static_argnames=("reduction",),
                )
            out = self.jitted[fn_name](self.params, *args, **kwargs)
        else:
            out = fn(self.model, self.params, *args, **kwargs)
        if isinstance(out, tuple):
            return tuple(self.numpy(o) for o in out)
        return self.numpy(out)

    def no_params(self, fn_name, *args):
        return self.numpy(getattr(self.mod, fn_name)(self.model, *(self.array(a) for a in args)))

    def numpy(self, a):
        return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

    def pure(self, fn_name, *args):
        return self.numpy(getattr(self.mod, fn_name)(*args))

    def array(self, a):
        return jnp.asarray(a) if self.name == "jax" else torch.as_tensor(a)


@pytest.fixture(
    scope="module",
    params=[("jax", CFG), ("torch", CFG), ("jax", GAUSSIAN_CFG), ("torch", GAUSSIAN_CFG)],
    ids=["jax-bernoulli", "torch-bernoulli", "jax-gaussian", "torch-gaussian"],
)
def side(request):
    return Side(*request.param)


def problem(k=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH,) + CFG.input_shape)
    shape = (BATCH, CFG.latent_dim) if k is None else (k, BATCH, CFG.latent_dim)
    return x, rng.normal(size=shape)


def test_terms_are_per_example(side):
    x, eps = problem()
    recon, kl = side("elbo_terms", x, eps)
    assert recon.shape == kl.shape == (BATCH,)
    mean, logvar = side("encode", x)
    assert mean.shape == logvar.shape == (BATCH, CFG.latent_dim)
    assert rel_diff(kl, reference.gaussian_kl(mean, logvar)) <= TOL
    decoded = side("decode", mean)
    assert decoded.shape == (BATCH,) + CFG.input_shape
    if side.config.likelihood == "bernoulli":
        want = reference.bernoulli_log_likelihood(x, decoded)
    else:
        want = reference.gaussian_log_likelihood(x, decoded, side.config.gaussian_std)
    assert rel_diff(side.no_params("log_likelihood", x, decoded), want) <= TOL
    z = mean + np.exp(logvar / 2) * eps
    assert rel_diff(recon, -side.no_params("log_likelihood", x, side("decode", z))) <= TOL


def test_loss_reductions_and_beta(side):
    x, eps = problem()
    recon, kl = side("elbo_terms", x, eps)
    per_example = side("negative_elbo", x, eps)
    assert per_example.shape == (BATCH,)
    assert rel_diff(per_example, recon + kl) <= TOL
    assert rel_diff(side("negative_elbo", x, eps, beta=0.3), recon + 0.3 * kl) <= TOL
    assert rel_diff(side("loss", x, eps), np.mean(per_example)) <= TOL
    assert rel_diff(side("loss", x, eps, reduction="mean"), np.mean(per_example)) <= TOL
    assert rel_diff(side("loss", x, eps, reduction="sum"), np.sum(per_example)) <= TOL
    want = np.sum(recon + 2.5 * kl)
    assert rel_diff(side("loss", x, eps, beta=2.5, reduction="sum"), want) <= TOL
    with pytest.raises(ValueError, match="reduction"):
        side("loss", x, eps, reduction="none")


def test_k_sample_reconstruction_is_the_mean_of_single_samples(side):
    x, eps = problem(k=3)
    recon, kl = side("elbo_terms", x, eps)
    singles = [side("elbo_terms", x, e) for e in eps]
    assert recon.shape == (BATCH,)
    assert rel_diff(recon, np.mean([r for r, _ in singles], axis=0)) <= TOL
    for _, kl_k in singles:
        assert rel_diff(kl, kl_k) <= TOL
    assert rel_diff(side("negative_elbo", x, eps), recon + kl) <= TOL


def monte_carlo_negative_elbo(side, x, eps):
    """-ELBO with the KL estimated from the same eps: recon + mean_k [log q(z_k) - log p(z_k)]."""
    recon, _ = side("elbo_terms", x, eps)
    mean, logvar = side("encode", x)
    z = side.pure("reparameterize", *(side.array(a) for a in (mean, logvar, eps)))
    log_p = side.pure("standard_normal_log_density", side.array(z))
    log_q = side.pure("standard_normal_log_density", side.array(eps)) - 0.5 * logvar.sum(-1)
    return recon + np.mean(log_q - log_p, axis=0)


def test_iwae_bound_is_tighter_than_the_elbo_of_the_same_samples(side):
    # Jensen: logmeanexp_k(log w_k) >= mean_k(log w_k), so -IWAE <= the K-sample -ELBO whose KL is
    # estimated from the same eps. (Against the closed-form KL it holds only in expectation.)
    x, eps = problem(k=5, seed=3)
    iwae = side("negative_iwae_bound", x, eps)
    elbo = monte_carlo_negative_elbo(side, x, eps)
    assert iwae.shape == (BATCH,)
    assert np.all(iwae <= elbo + TOL * np.abs(elbo))
    assert np.all(elbo - iwae > TOL * np.abs(elbo)), "distinct samples must tighten the bound"


def test_iwae_bound_with_one_sample_is_the_single_sample_elbo(side):
    x, eps = problem(k=1, seed=4)
    iwae = side("negative_iwae_bound", x, eps)
    assert rel_diff(iwae, monte_carlo_negative_elbo(side, x, eps)) <= TOL


def test_iwae_bound_of_repeated_samples_counts_log_k(side):
    # K copies of one sample give K equal weights: logsumexp - log K leaves the K=1 bound.
    x, eps = problem(k=1, seed=5)
    one = side("negative_iwae_bound", x, eps)
    assert rel_diff(side("negative_iwae_bound", x, np.repeat(eps, 4, axis=0)), one) <= TOL


def test_iwae_bound_needs_samples_axis(side):
    x, eps = problem(seed=6)
    with pytest.raises(ValueError, match=r"\(K, B, L\)"):
        side("negative_iwae_bound", x, eps)


# Bad input is rejected with a message naming the array and both shapes


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_wrong_x_shape_names_both_shapes(backend):
    s = Side(backend, CFG)
    error = s.mod.ShapeError
    assert issubclass(error, ValueError)
    x, eps = problem()
    with pytest.raises(error, match=r"x has shape \(4, 1, 3, 2\).*\(batch, 1, 2, 3\)"):
        s("elbo_terms", x.reshape(4, 1, 3, 2), eps)
    with pytest.raises(error, match=r"x has shape \(4, 6\)"):
        s("encode", x.reshape(4, 6))
    with pytest.raises(error, match=r"eps has shape \(4, 3\).*\(4, 2\)"):
        s("elbo_terms", x, np.zeros((4, 3)))
    with pytest.raises(error, match=r"eps has shape \(3, 2\).*\(4, 2\)"):
        s("loss", x, np.zeros((3, 2)))
    with pytest.raises(error, match=r"eps has shape \(2, 2, 2, 2\)"):
        s("negative_iwae_bound", x, np.zeros((2, 2, 2, 2)))
    with pytest.raises(error, match="floating point"):
        s("elbo_terms", (x > 0.5).astype(np.int64), eps)
