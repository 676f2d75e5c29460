"""The parity checker: both backends, shared weights, shared noise, every tensor compared by name.

Imports jax and torch only inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_common.compare import BF16_JUDGED, TOLERANCES, max_abs_diff, rel_diff
from vae_common.config import VAEConfig
from vae_common.errors import UsageError
from vae_common.precision import JAX_MATMUL_PRECISION, check_precision
from vae_common.spec import init_canonical


@dataclass(frozen=True)
class ParityInputs:
    """One shared problem: canonical weights, a batch and its noise, all numpy float64."""

    config: VAEConfig
    state: dict
    x: np.ndarray
    eps: np.ndarray  # (B, L) or (K, B, L)
    beta: float
    objective: str  # "elbo" or "iwae"


def make_inputs(
    config: VAEConfig,
    seed: int = 0,
    batch_size: int = 128,
    k: int = 1,
    beta: float = 1.0,
    objective: str = "elbo",
    state: dict | None = None,
    x: np.ndarray | None = None,
) -> ParityInputs:
    """Shared weights (``init_canonical`` unless ``state`` is given), a batch, noise from ``seed``.

    Without ``x`` the batch is uniform in [0, 1] (valid for both likelihoods).
    """
    if objective not in ("elbo", "iwae"):
        raise UsageError(f"objective must be 'elbo' or 'iwae', got {objective!r}")
    if objective == "iwae" and k < 2:
        raise UsageError("the IWAE objective needs k >= 2 samples")
    rng = np.random.default_rng([seed, 1])
    if state is None:
        state = init_canonical(config, seed)
    if x is None:
        x = rng.random((batch_size,) + config.input_shape)
    batch = x.shape[0]
    shape = (batch, config.latent_dim) if k == 1 else (k, batch, config.latent_dim)
    eps = rng.standard_normal(shape)
    state = {n: np.asarray(v, np.float64) for n, v in state.items()}
    return ParityInputs(config, state, np.asarray(x, np.float64), eps, float(beta), objective)


# The per-example terms compared, each (B,): the two ELBO terms and the per-example objective
# (the negative ELBO with beta, or the negative IWAE bound).
TERMS = ("reconstruction", "kl", "objective")


# The precisions the parity check compares (TF32 has no declared tolerance: its products round
# as the GPU's tensor cores do, which no CPU reproduces).
PARITY_PRECISIONS = ("float32", "bf16")


def _check_parity_precision(precision: str, dtype: str) -> None:
    check_precision(precision, dtype)
    if precision not in PARITY_PRECISIONS:
        raise UsageError(f"parity compares precisions {PARITY_PRECISIONS}, got {precision!r}")


def jax_side(inp: ParityInputs, dtype: str, precision: str = "float32") -> dict:
    """Loss, per-example terms and canonical gradients from the JAX backend (numpy out);
    ``precision="bf16"``: its bfloat16 layers (``vae_jax.model.with_precision``)."""
    import jax

    import vae_jax
    from vae_jax.model import with_precision

    _check_parity_precision(precision, dtype)
    if dtype == "float64":
        vae_jax.enable_float64()
    canonical = vae_jax.build_model(inp.config, dtype)
    model = with_precision(canonical, precision)
    params = vae_jax.from_canonical(model, inp.state)
    x = jax.numpy.asarray(inp.x, dtype)
    eps = jax.numpy.asarray(inp.eps, dtype)

    def per_example(p: Any) -> Any:
        if inp.objective == "iwae":
            return vae_jax.negative_iwae_bound(model, p, x, eps)
        return vae_jax.negative_elbo(model, p, x, eps, inp.beta)

    def objective(p: Any) -> Any:
        if inp.objective == "iwae":
            return jax.numpy.mean(per_example(p))
        return vae_jax.loss(model, p, x, eps, beta=inp.beta)

    with jax.default_matmul_precision(JAX_MATMUL_PRECISION[precision]):
        value, grads = jax.jit(jax.value_and_grad(objective))(params)
        recon, kl = jax.jit(lambda p: vae_jax.elbo_terms(model, p, x, eps))(params)
        terms = jax.jit(per_example)(params)
    return {
        "loss": float(value),
        "loss_dtype": str(value.dtype),
        "reconstruction": np.asarray(recon),
        "kl": np.asarray(kl),
        "objective": np.asarray(terms),
        "grads": vae_jax.to_canonical(canonical, grads),
    }


def torch_side(
    inp: ParityInputs, dtype: str, device: str | None = "cpu", precision: str = "float32"
) -> dict:
    """The same from the torch backend, on ``device`` (TF32 disabled); ``precision="bf16"``:
    the forward pass under ``torch.autocast`` (``vae_torch.train.autocast``)."""
    import torch

    import vae_torch
    from vae_torch.train import autocast

    _check_parity_precision(precision, dtype)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = vae_torch.select_device(device)
    vae_torch.check_dtype(dev, dtype)
    model = vae_torch.build_model(inp.config, dtype).to(dev)
    vae_torch.from_canonical(model, inp.state)
    tdtype = vae_torch.model.resolve_dtype(dtype)
    x = torch.as_tensor(inp.x, dtype=tdtype, device=dev)
    eps = torch.as_tensor(inp.eps, dtype=tdtype, device=dev)
    model.zero_grad(set_to_none=True)
    with autocast(dev.type, precision):
        if inp.objective == "iwae":
            value = torch.mean(vae_torch.negative_iwae_bound(model, None, x, eps))
        else:
            value = vae_torch.loss(model, None, x, eps, beta=inp.beta)
    value.backward()
    with torch.no_grad(), autocast(dev.type, precision):
        recon, kl = vae_torch.elbo_terms(model, None, x, eps)
        if inp.objective == "iwae":
            terms = vae_torch.negative_iwae_bound(model, None, x, eps)
        else:
            terms = vae_torch.negative_elbo(model, None, x, eps, inp.beta)
    grads = {}
    for n, p in model.named_parameters():
        if p.grad is None:  # a parameter the objective does not reach (none in this model)
            raise UsageError(f"torch computed no gradient for {n!r}")
        grads[n] = p.grad
    return {
        "loss": float(value.detach().cpu()),
        "loss_dtype": str(value.dtype).removeprefix("torch."),
        "loss_device": value.device.type,
        "reconstruction": recon.cpu().numpy(),
        "kl": kl.cpu().numpy(),
        "objective": terms.cpu().numpy(),
        "grads": vae_torch.to_canonical(model, grads),
    }


def compare(jax_out: dict, torch_out: dict, dtype: str, tolerance: float | None = None) -> dict:
    """The report: loss, per-example terms and every gradient by canonical name (torch = reference).

    Returns the JSON-ready dict ``{"dtype", "loss", "terms", "grads", "max_rel_diff",
    "tolerance", "passed"}``.
    """
    tol = TOLERANCES[dtype] if tolerance is None else tolerance
    loss = {
        "jax": jax_out["loss"],
        "torch": torch_out["loss"],
        "rel_diff": rel_diff(jax_out["loss"], torch_out["loss"]),
    }
    terms = {
        t: {
            "max_abs_diff": max_abs_diff(jax_out[t], torch_out[t]),
            "max_rel_diff": rel_diff(jax_out[t], torch_out[t]),
        }
        for t in TERMS
    }
    grads = {
        name: {
            "max_abs_diff": max_abs_diff(jax_out["grads"][name], g),
            "max_rel_diff": rel_diff(jax_out["grads"][name], g),
        }
        for name, g in torch_out["grads"].items()
    }
    worst = max(
        [loss["rel_diff"]]
        + [t["max_rel_diff"] for t in terms.values()]
        + [g["max_rel_diff"] for g in grads.values()]
    )
    return {
        "dtype": dtype,
        "loss": loss,
        "terms": terms,
        "grads": grads,
        "max_rel_diff": worst,
        "tolerance": tol,
        "passed": bool(worst <= tol),
    }


def check_parity(
    inp: ParityInputs,
    dtype: str = "float64",
    device: str | None = "cpu",
    precision: str = "float32",
) -> dict:
    """Run both backends on ``inp`` in ``dtype`` and compare (see ``compare``).

    ``precision="bf16"`` (float32 only): both backends' bfloat16 layers, judged against
    ``TOLERANCES["bf16"]`` on the loss and the per-example reconstruction and objective only
    (``vae_common.compare.BF16_JUDGED`` says why); the KL and the gradients are reported.
    """
    report = compare(
        jax_side(inp, dtype, precision),
        torch_side(inp, dtype, device, precision),
        dtype,
        TOLERANCES["bf16"] if precision == "bf16" else None,
    )
    if precision == "bf16":
        report["judged"] = ", ".join(BF16_JUDGED)
        report["max_rel_diff"] = max(
            report["loss"]["rel_diff"] if name == "loss" else report["terms"][name]["max_rel_diff"]
            for name in BF16_JUDGED
        )
        report["passed"] = bool(report["max_rel_diff"] <= report["tolerance"])
    report["precision"] = precision
    report["device"] = {"jax": _jax_device(), "torch": str(device or "auto")}
    report["objective"] = inp.objective
    return report


def _jax_device() -> str:
    import jax

    return str(jax.devices()[0].platform)


def format_table(report: dict) -> str:
    """A per-tensor text table of a parity report."""
    rows = [("tensor", "max abs diff", "max rel diff")]
    loss = report["loss"]
    rows.append(("loss", f"{abs(loss['jax'] - loss['torch']):.3e}", f"{loss['rel_diff']:.3e}"))
    for name, t in report.get("terms", {}).items():
        rows.append(
            (f"{name} (per example)", f"{t['max_abs_diff']:.3e}", f"{t['max_rel_diff']:.3e}")
        )
    for name, g in report["grads"].items():
        rows.append((f"grad {name}", f"{g['max_abs_diff']:.3e}", f"{g['max_rel_diff']:.3e}"))
    for name, p in report.get("params", {}).items():
        rows.append((f"param {name}", f"{p['max_abs_diff']:.3e}", f"{p['max_rel_diff']:.3e}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>12}  {r[2]:>12}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    verdict = "PASSED" if report["passed"] else "FAILED"
    precision = report.get("precision", "float32")
    label = report["dtype"] if precision == "float32" else f"{report['dtype']} ({precision})"
    lines.append(
        f"{label}: loss jax {loss['jax']:.10g}, torch {loss['torch']:.10g}; "
        f"max rel diff {report['max_rel_diff']:.3e} "
        f"(tolerance {report['tolerance']:.0e}"
        + (f", judged: {report['judged']}" if "judged" in report else "")
        + f"): {verdict}"
    )
    return "\n".join(lines)
