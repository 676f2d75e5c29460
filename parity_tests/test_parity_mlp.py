"""JAX and PyTorch compute the same MLP VAE: loss, per-example terms and every gradient by name.

Both backends start from the same canonical weights (``init_canonical``) and get the same noise,
so the only differences left are rounding. They must agree within ``TOLERANCES`` (relative
difference ``rel_diff``, torch as the reference); in float64 each backend must also agree with the
numpy closed forms of ``vae_common.reference``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vae_jax
import vae_torch
from vae_common import reference
from vae_common.compare import TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.spec import param_spec
from vae_tools.parity import ParityInputs, make_inputs
from vae_torch.device import ENV_VAR

pytestmark = pytest.mark.usefixtures("ieee_subnormals")

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Outputs:
    """One backend's answer, as float64 numpy arrays."""

    loss: float
    terms: dict[str, np.ndarray]  # "reconstruction", "kl", "objective": each (B,)
    grads: dict[str, np.ndarray]  # canonical name -> gradient in canonical layout


def run_jax(inp: ParityInputs, dtype: str) -> Outputs:
    model = vae_jax.build_model(inp.config, dtype)
    params = vae_jax.from_canonical(model, inp.state)
    x = jnp.asarray(inp.x, dtype)
    eps = jnp.asarray(inp.eps, dtype)

    def objective(p):
        recon, kl = vae_jax.elbo_terms(model, p, x, eps)
        if inp.objective == "iwae":
            per_example = vae_jax.negative_iwae_bound(model, p, x, eps)
            value = jnp.mean(per_example)
        else:
            per_example = vae_jax.negative_elbo(model, p, x, eps, inp.beta)
            value = vae_jax.loss(model, p, x, eps, beta=inp.beta)
        return value, (recon, kl, per_example)

    with jax.default_matmul_precision("highest"):
        step = jax.jit(jax.value_and_grad(objective, has_aux=True))
        (value, (recon, kl, per_example)), grads = step(params)
    assert value.dtype == jnp.dtype(dtype)
    return Outputs(
        float(value),
        {
            "reconstruction": np.asarray(recon),
            "kl": np.asarray(kl),
            "objective": np.asarray(per_example),
        },
        vae_jax.to_canonical(model, grads),
    )


def run_torch(inp: ParityInputs, dtype: str, device: torch.device) -> Outputs:
    tdtype = TORCH_DTYPES[dtype]
    model = vae_torch.build_model(inp.config, dtype).to(device)
    vae_torch.from_canonical(model, inp.state)
    x = torch.as_tensor(inp.x, dtype=tdtype, device=device)
    eps = torch.as_tensor(inp.eps, dtype=tdtype, device=device)
    if inp.objective == "iwae":
        value = torch.mean(vae_torch.negative_iwae_bound(model, None, x, eps))
    else:
        value = vae_torch.loss(model, None, x, eps, beta=inp.beta)
    assert value.dtype == tdtype and value.device.type == device.type
    value.backward()
    with torch.no_grad():
        recon, kl = vae_torch.elbo_terms(model, None, x, eps)
        if inp.objective == "iwae":
            per_example = vae_torch.negative_iwae_bound(model, None, x, eps)
        else:
            per_example = vae_torch.negative_elbo(model, None, x, eps, inp.beta)
    grads = {name: p.grad for name, p in model.named_parameters()}
    return Outputs(
        float(value.detach().cpu()),
        {
            "reconstruction": recon.cpu().numpy(),
            "kl": kl.cpu().numpy(),
            "objective": per_example.cpu().numpy(),
        },
        vae_torch.to_canonical(model, grads),
    )


def reference_terms(inp: ParityInputs) -> dict[str, np.ndarray]:
    """The per-example terms in float64 numpy (``vae_common.reference``), for any K."""
    samples = inp.eps if inp.eps.ndim == 3 else inp.eps[None]
    recon_k, log_w = [], []
    for eps in samples:
        recon, kl = reference.negative_elbo_terms(inp.state, inp.config, inp.x, eps)
        _, mean, logvar = reference.mlp_forward(inp.state, inp.config, inp.x, eps)
        z = mean + np.exp(0.5 * logvar) * eps
        log_prior = -0.5 * np.sum(z**2 + reference.LOG_2PI, axis=-1)
        log_q = -0.5 * np.sum(eps**2 + logvar + reference.LOG_2PI, axis=-1)
        recon_k.append(recon)
        log_w.append(-recon + log_prior - log_q)
    recon = np.mean(recon_k, axis=0)
    if inp.objective == "iwae":
        log_w = np.stack(log_w)
        top = np.max(log_w, axis=0)
        log_mean_w = top + np.log(np.mean(np.exp(log_w - top), axis=0))
        objective = -log_mean_w
    else:
        objective = recon + inp.beta * kl
    return {"reconstruction": recon, "kl": kl, "objective": objective}


def over_tolerance(got: dict[str, np.ndarray], want: dict[str, np.ndarray], tol: float) -> dict:
    """``{name: rel_diff}`` of every entry whose relative difference exceeds ``tol`` (or is NaN)."""
    assert sorted(got) == sorted(want)
    diffs = {name: rel_diff(got[name], want[name]) for name in want}
    return {name: d for name, d in diffs.items() if not d <= tol}


def assert_parity(j: Outputs, t: Outputs, inp: ParityInputs, dtype: str) -> None:
    names = [s.name for s in param_spec(inp.config)]
    assert list(j.grads) == names, "JAX gradients are not the canonical tensors in spec order"
    assert list(t.grads) == names, "torch gradients are not the canonical tensors in spec order"
    batch = inp.x.shape[0]
    for side in (j, t):
        for name, term in side.terms.items():
            assert term.shape == (batch,), f"{name} has shape {term.shape}, expected ({batch},)"
        assert np.isfinite(side.loss)
    tol = TOLERANCES[dtype]
    got = {"loss": np.float64(j.loss), **j.terms, **{f"grad {n}": g for n, g in j.grads.items()}}
    want = {"loss": np.float64(t.loss), **t.terms, **{f"grad {n}": g for n, g in t.grads.items()}}
    bad = over_tolerance(got, want, tol)
    assert not bad, f"{dtype} JAX vs torch over the tolerance {tol:g}: {bad}"


def assert_matches_reference(out: Outputs, inp: ParityInputs, backend: str) -> None:
    tol = TOLERANCES["float64"]
    bad = over_tolerance(out.terms, reference_terms(inp), tol)
    assert not bad, f"{backend} float64 vs the numpy closed form over {tol:g}: {bad}"


def check_case(inp: ParityInputs, dtype: str, device: torch.device) -> None:
    j, t = run_jax(inp, dtype), run_torch(inp, dtype, device)
    assert_parity(j, t, inp, dtype)
    if dtype == "float64":
        assert_matches_reference(j, inp, "JAX")
        assert_matches_reference(t, inp, "torch")


SMALL = VAEConfig(input_shape=(2, 6, 5), hidden=(7, 3), latent_dim=4)
SMALL_GAUSSIAN = VAEConfig(
    input_shape=(1, 4, 4), hidden=(5,), latent_dim=3, likelihood="gaussian", gaussian_std=0.5
)
NO_HIDDEN_GAUSSIAN = VAEConfig(
    input_shape=(1, 5, 4), hidden=(), latent_dim=2, likelihood="gaussian"
)

# With this seed one of the two samples has importance weight 3e-12 and the decoder's hidden units
# are all off for the other, so the decoder weights get their gradient from the tiny weight alone:
# it must be as precise relative to its size as the others.
TINY_WEIGHT = VAEConfig(
    input_shape=(1, 4, 5), hidden=(4,), latent_dim=5, likelihood="gaussian", gaussian_std=0.5
)

# (config, seed, batch size, K samples, beta, objective)
CASES = {
    "gaussian-beta0.25-batch1": (SMALL_GAUSSIAN, 3, 1, 1, 0.25, "elbo"),
    "bernoulli-K3-beta2-batch128": (SMALL, 3, 128, 3, 2.0, "elbo"),
    "gaussian-iwae-K4-batch1": (SMALL_GAUSSIAN, 3, 1, 4, 1.0, "iwae"),
    "bernoulli-iwae-K5-batch128": (SMALL, 3, 128, 5, 1.0, "iwae"),
    "gaussian-nohidden-K2-beta4-batch16": (NO_HIDDEN_GAUSSIAN, 3, 16, 2, 4.0, "elbo"),
    "gaussian-iwae-tiny-weight": (TINY_WEIGHT, 154, 1, 2, 0.0, "iwae"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_small_configs_agree(case, dtype, torch_device):
    config, seed, batch, k, beta, objective = CASES[case]
    inp = make_inputs(config, seed=seed, batch_size=batch, k=k, beta=beta, objective=objective)
    check_case(inp, dtype, torch_device)


@pytest.mark.slow
@pytest.mark.parametrize("objective, k", [("elbo", 1), ("iwae", 3)])
def test_default_784_400_20_batch128_agrees(objective, k, dtype, torch_device):
    inp = make_inputs(VAEConfig(), seed=0, batch_size=128, k=k, objective=objective)
    assert len(param_spec(inp.config)) == 10
    check_case(inp, dtype, torch_device)


@st.composite
def parity_problems(draw):
    config = VAEConfig(
        input_shape=(
            draw(st.integers(1, 2)),
            draw(st.integers(4, 6)),
            draw(st.integers(4, 5)),
        ),
        hidden=tuple(draw(st.lists(st.integers(1, 8), min_size=0, max_size=2))),
        latent_dim=draw(st.integers(1, 6)),
        likelihood=draw(st.sampled_from(["bernoulli", "gaussian"])),
        gaussian_std=draw(st.sampled_from([0.5, 1.0, 2.0])),
    )
    objective = draw(st.sampled_from(["elbo", "iwae"]))
    k = draw(st.integers(2, 4)) if objective == "iwae" else draw(st.integers(1, 3))
    return make_inputs(
        config,
        seed=draw(st.integers(0, 2**16)),
        batch_size=draw(st.sampled_from([1, 2, 7])),
        k=k,
        beta=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        objective=objective,
    )


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(inp=parity_problems(), data=st.data())
def test_random_configs_agree(inp, data, parity_dtypes, torch_device):
    dtype = data.draw(st.sampled_from(parity_dtypes), label="dtype")
    check_case(inp, dtype, torch_device)


def test_gradient_of_the_reference_problem_is_not_zero(torch_device):
    # Guards the comparisons above against vacuous agreement: every gradient tensor is non-zero.
    inp = make_inputs(SMALL, seed=3, batch_size=8, k=2)
    grads = run_torch(inp, "float32", torch_device).grads
    assert all(np.any(g != 0) for g in grads.values())


def test_disagreement_is_detected():
    # The comparison catches a change far below what any layout or formula mistake would give.
    inp = make_inputs(SMALL, seed=3, batch_size=8, k=2)
    t = run_torch(inp, "float64", torch.device("cpu"))
    nudged = {**t.grads, "decoder.out.bias": t.grads["decoder.out.bias"] * (1 + 1e-9)}
    with pytest.raises(AssertionError, match="decoder.out.bias"):
        assert_parity(Outputs(t.loss, t.terms, nudged), t, inp, "float64")


@pytest.mark.accelerator
def test_accelerator_parity(monkeypatch):
    """On a machine with a CUDA, XPU or MPS device, the default model agrees there too."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    device = vae_torch.select_device("auto")
    if device.type == "cpu":
        pytest.skip("no CUDA, XPU or MPS device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    inp = make_inputs(VAEConfig(), seed=0, batch_size=128, k=2)
    for dtype in TOLERANCES:
        if dtype == "float64" and not vae_torch.supports_float64(device):
            continue
        assert_parity(run_jax(inp, dtype), run_torch(inp, dtype, device), inp, dtype)
