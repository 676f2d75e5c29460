"""Training trajectories agree: 100 Adam steps from the same weights, batches and noise end with
the same parameters in both backends, and the Adam update and the training objective agree step
for step.

Tolerances: ``TRAJECTORY_TOLERANCES`` for whole trajectories in float64, ``TOLERANCES`` for one
step and for float32 loss curves (see ``vae_common.compare`` for why float32 parameters are not
judged after 100 steps). The torch side runs on the conftest's ``torch_device``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import vae_jax
import vae_jax.train
import vae_torch
import vae_torch.train
from vae_common.compare import TOLERANCES, TRAJECTORY_TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical, param_spec
from vae_common.training import TrainConfig, beta_at
from vae_tools.trajectory import check_trajectory

SMALL = VAEConfig(input_shape=(1, 6, 5), hidden=(7, 3), latent_dim=4)
# Not the defaults, and an eps large enough that putting it inside the square root would show.
ADAM = TrainConfig(lr=0.01, b1=0.8, b2=0.99, adam_eps=1e-3)


def over(diffs: dict[str, float], tol: float) -> dict[str, float]:
    """The entries above ``tol`` (NaN counts as above)."""
    return {name: d for name, d in diffs.items() if not d <= tol}


def assert_trajectory_agrees(report: dict, config: VAEConfig, steps: int, dtype: str) -> None:
    names = [s.name for s in param_spec(config)]
    curve = report["loss_curve"]
    assert report["dtype"] == dtype and report["steps"] == steps
    assert len(curve["jax"]) == len(curve["torch"]) == steps
    assert np.all(np.isfinite(curve["jax"])) and np.all(np.isfinite(curve["torch"]))
    assert curve["torch"][-1] < curve["torch"][0], "the trajectory did not train"
    per_step = {
        f"loss step {i}": rel_diff(a, b)
        for i, (a, b) in enumerate(zip(curve["jax"], curve["torch"], strict=True))
    }
    if dtype in TRAJECTORY_TOLERANCES:
        tol = TRAJECTORY_TOLERANCES[dtype]
        assert report["tolerance"] == tol
        assert list(report["params"]) == names and list(report["grads"]) == names
        judged = {
            **per_step,
            **{f"param {n}": p["max_rel_diff"] for n, p in report["params"].items()},
            **{f"final grad {n}": g["max_rel_diff"] for n, g in report["grads"].items()},
        }
    else:
        tol = TOLERANCES[dtype]
        assert report["tolerance"] == tol
        judged = per_step
    bad = over(judged, tol)
    assert not bad, f"{dtype} trajectory of {steps} steps over {tol:g}: {bad}"
    assert report["passed"], report["judged"]


@pytest.mark.slow
def test_mlp_784_400_20_batch128_100_steps(dtype, torch_device):
    config = VAEConfig()
    report = check_trajectory(
        config, steps=100, dtype=dtype, batch_size=128, device=str(torch_device)
    )
    assert_trajectory_agrees(report, config, 100, dtype)


@pytest.mark.slow
def test_small_config_beta_half_100_steps(dtype, torch_device):
    report = check_trajectory(
        SMALL,
        steps=100,
        dtype=dtype,
        batch_size=16,
        lr=3e-3,
        beta=0.5,
        seed=4,
        device=str(torch_device),
    )
    assert_trajectory_agrees(report, SMALL, 100, dtype)


def adam_problem(config: VAEConfig, seed: int = 0):
    """Weights, a gradient and a mid-run Adam state (moments, 5 steps taken), float64 numpy."""
    rng = np.random.default_rng([seed, 21])
    params = init_canonical(config, seed)
    grads = {n: rng.standard_normal(v.shape) for n, v in params.items()}
    exp_avg = {n: 0.1 * rng.standard_normal(v.shape) for n, v in params.items()}
    exp_avg_sq = {n: 0.01 * rng.random(v.shape) for n, v in params.items()}
    return params, grads, exp_avg, exp_avg_sq, 5


def adam_numpy(train: TrainConfig, params, grads, exp_avg, exp_avg_sq, step):
    """The update both backends promise: bias-corrected, eps outside the square root."""
    t = step + 1
    out = {}
    for n, p in params.items():
        m = train.b1 * exp_avg[n] + (1 - train.b1) * grads[n]
        v = train.b2 * exp_avg_sq[n] + (1 - train.b2) * grads[n] ** 2
        m_hat, v_hat = m / (1 - train.b1**t), v / (1 - train.b2**t)
        out[n] = p - train.lr * m_hat / (np.sqrt(v_hat) + train.adam_eps)
    return out


def adam_step_jax(config, train, params, grads, exp_avg, exp_avg_sq, step):
    model = vae_jax.build_model(config, "float64")
    optimizer = vae_jax.train.make_optimizer(model, train)
    p = vae_jax.from_canonical(model, params)
    state = optimizer.init(p)
    adam = state[0]._replace(
        count=jnp.asarray(step, jnp.int32),
        mu=vae_jax.from_canonical(model, exp_avg),
        nu=vae_jax.from_canonical(model, exp_avg_sq),
    )

    @jax.jit
    def step_fn(g, opt_state, p):
        updates, opt_state = optimizer.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    new_p, new_state = step_fn(vae_jax.from_canonical(model, grads), (adam,) + tuple(state[1:]), p)
    return (
        vae_jax.to_canonical(model, new_p),
        vae_jax.to_canonical(model, new_state[0].mu),
        vae_jax.to_canonical(model, new_state[0].nu),
    )


def adam_step_torch(config, train, params, grads, exp_avg, exp_avg_sq, step, fused, device):
    model = vae_torch.build_model(config, "float64").to(device)
    vae_torch.from_canonical(model, params)
    try:
        # The private constructor: make_optimizer always picks the fused kernel where it exists.
        optimizer = vae_torch.train._adam(model, train, fused=fused)
    except (RuntimeError, ValueError) as exc:
        pytest.skip(f"no fused Adam for {device} in this torch build: {exc}")
    assert bool(optimizer.param_groups[0].get("fused")) == fused
    for n, p in model.named_parameters():
        p.grad = torch.as_tensor(grads[n], device=device)
        step_t = torch.tensor(float(step), dtype=torch.float32)
        optimizer.state[p] = {
            "step": step_t.to(device) if fused else step_t,
            "exp_avg": torch.as_tensor(exp_avg[n], device=device).clone(),
            "exp_avg_sq": torch.as_tensor(exp_avg_sq[n], device=device).clone(),
        }
    optimizer.step()
    new = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
    state = {n: optimizer.state[p] for n, p in model.named_parameters()}
    return (
        new,
        {n: s["exp_avg"].cpu().numpy() for n, s in state.items()},
        {n: s["exp_avg_sq"].cpu().numpy() for n, s in state.items()},
    )


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "for-loop"])
def test_one_adam_step_matches_float64(fused, torch_device, parity_dtypes):
    if "float64" not in parity_dtypes:
        pytest.skip(f"{torch_device} has no float64")
    problem = adam_problem(SMALL)
    params = problem[0]
    j_params, j_m, j_v = adam_step_jax(SMALL, ADAM, *problem)
    t_params, t_m, t_v = adam_step_torch(SMALL, ADAM, *problem, fused=fused, device=torch_device)
    want = adam_numpy(ADAM, *problem)
    diffs = {}
    for n in params:
        diffs[f"param {n} (jax vs torch)"] = rel_diff(j_params[n], t_params[n])
        diffs[f"update {n} (jax vs torch)"] = rel_diff(
            j_params[n] - params[n], t_params[n] - params[n]
        )
        diffs[f"update {n} (torch vs numpy)"] = rel_diff(
            t_params[n] - params[n], want[n] - params[n]
        )
        diffs[f"exp_avg {n}"] = rel_diff(j_m[n], t_m[n])
        diffs[f"exp_avg_sq {n}"] = rel_diff(j_v[n], t_v[n])
    bad = over(diffs, TOLERANCES["float64"])
    assert not bad, f"one Adam step ({'fused' if fused else 'for-loop'} torch) differs: {bad}"
    # The step moved every tensor by about lr: the comparison above is not of unchanged weights.
    assert all(np.max(np.abs(t_params[n] - params[n])) > 0.1 * ADAM.lr for n in params)


def test_kl_warmup_schedule_is_the_same_traced_and_untraced():
    train = TrainConfig(beta=2.0, warmup_steps=8)
    traced = jax.jit(lambda s: beta_at(train, s.astype(jnp.float64), jnp.minimum))
    for step in (0, 1, 3, 8, 9, 100):
        assert float(traced(jnp.asarray(step, jnp.int32))) == beta_at(train, step)
    assert beta_at(train, 4) == 1.0 and beta_at(train, 8) == 2.0 and beta_at(train, 0) == 0.0


def test_objective_with_warmup_and_free_bits_agrees_float64(torch_device, parity_dtypes):
    if "float64" not in parity_dtypes:
        pytest.skip(f"{torch_device} has no float64")
    tol = TOLERANCES["float64"]
    rng = np.random.default_rng(5)
    state = init_canonical(SMALL, 2)
    x = rng.random((32,) + SMALL.input_shape)
    eps = rng.standard_normal((32, SMALL.latent_dim))

    t_model = vae_torch.build_model(SMALL, "float64").to(torch_device)
    vae_torch.from_canonical(t_model, state)
    tx = torch.as_tensor(x, device=torch_device)
    teps = torch.as_tensor(eps, device=torch_device)
    with torch.no_grad():
        mean, logvar = vae_torch.encode(t_model, None, tx)
        kl_dims = torch.mean(-0.5 * (1 + logvar - mean**2 - torch.exp(logvar)), dim=0)
    kl_dims = np.sort(kl_dims.cpu().numpy())
    # Half the latent dimensions under the free-bits floor, half over: both branches count.
    free_bits = float(kl_dims[1] + kl_dims[2]) / 2
    train = TrainConfig(beta=2.0, warmup_steps=10, free_bits=free_bits)
    beta = beta_at(train, 4)
    assert 0 < beta < train.beta

    t_value = vae_torch.objective(t_model, None, tx, teps, beta, free_bits)
    t_value.backward()
    t_grads = vae_torch.to_canonical(t_model, {n: p.grad for n, p in t_model.named_parameters()})

    j_model = vae_jax.build_model(SMALL, "float64")
    params = vae_jax.from_canonical(j_model, state)
    with jax.default_matmul_precision("highest"):
        j_value, j_grads = jax.jit(
            jax.value_and_grad(lambda p: vae_jax.objective(j_model, p, x, eps, beta, free_bits))
        )(params)
    j_grads = vae_jax.to_canonical(j_model, j_grads)

    diffs = {"objective": rel_diff(float(j_value), float(t_value.detach().cpu()))}
    diffs.update({f"grad {n}": rel_diff(j_grads[n], t_grads[n]) for n in t_grads})
    bad = over(diffs, tol)
    assert not bad, f"objective with warm-up and free bits differs: {bad}"
    # The free-bits floor changes the objective: it is not the plain loss.
    plain = float(vae_torch.loss(t_model, None, tx, teps, beta=beta).detach().cpu())
    assert abs(plain - float(t_value.detach().cpu())) > 1e-6
    assert all(np.any(g != 0) for g in t_grads.values())
