"""The accuracy checks of ``vae check``: the parity of the MLP and the conv model (float64
where the device has it, float32 with TF32 off, the MLP in bf16) and a short training
trajectory (float64 where the device has it, else float32)."""

from __future__ import annotations

import functools
from typing import Any

from vae_common.config import VAEConfig
from vae_tools.check_machine import device_name
from vae_tools.check_result import guarded, make_check
from vae_tools.check_settings import CheckSettings


def parity_checks(
    s: CheckSettings, torch_device: Any, jax_device: Any, jax_note: str | None
) -> list[dict[str, Any]]:
    """The parity checks, ``parity/{arch}/{dtype or precision}``; float64 ones are skipped on
    a device without float64 kernels."""
    from vae_torch.device import supports_float64

    has_fp64 = supports_float64(torch_device)
    out = []
    for arch, config in (("mlp", s.mlp), ("conv", s.conv)):
        runs = [("float64", "float32"), ("float32", "float32")]
        if arch == "mlp":
            runs.append(("float32", "bf16"))
        for dtype, precision in runs:
            name = f"parity/{arch}/{precision if precision != 'float32' else dtype}"
            extra: dict[str, Any] = {"dtype": dtype, "precision": precision}
            if dtype == "float64" and not has_fp64:
                out.append(make_check(name, None, reason=no_float64(torch_device), **extra))
                continue
            run = functools.partial(
                _parity_one, name, config, dtype, precision, s, torch_device, jax_device, jax_note
            )
            out.append(guarded(name, run, **extra))
    return out


def _parity_one(
    name: str,
    config: VAEConfig,
    dtype: str,
    precision: str,
    s: CheckSettings,
    torch_device: Any,
    jax_device: Any,
    jax_note: str | None,
) -> dict[str, Any]:
    import jax

    from vae_tools import parity

    batch = s.conv_batch_size if config.arch == "conv" else s.batch_size
    inp = parity.make_inputs(config, seed=0, batch_size=batch)
    with jax.default_device(jax_device):
        report = parity.check_parity(inp, dtype, str(torch_device), precision)
    return make_check(
        name,
        report["passed"],
        report["max_rel_diff"],
        report["tolerance"],
        jax_note,
        judged=report.get("judged", "loss, per-example terms, every gradient"),
    )


def no_float64(torch_device: Any) -> str:
    """The reason a float64 check is skipped on ``torch_device``."""
    return (
        f"{torch_device} ({device_name(torch_device)}) has no float64 kernels "
        "(vae_torch.supports_float64)"
    )


def trajectory_check(
    s: CheckSettings, torch_device: Any, jax_device: Any, jax_note: str | None
) -> dict[str, Any]:
    """The trajectory check of the MLP, ``trajectory/mlp/{dtype}``: float64 where the device
    has it, else float32 (the loss curve only), with the reason."""
    import jax

    from vae_tools.trajectory import check_trajectory
    from vae_torch.device import supports_float64

    dtype = "float64" if supports_float64(torch_device) else "float32"
    name = f"trajectory/mlp/{dtype}"
    reason = jax_note
    if dtype == "float32":
        reason = "; ".join(
            r for r in (no_float64(torch_device) + ": float32, loss curve only", jax_note) if r
        )

    def run() -> dict[str, Any]:
        with jax.default_device(jax_device):
            report = check_trajectory(
                s.mlp,
                steps=s.trajectory_steps,
                dtype=dtype,
                batch_size=s.batch_size,
                device=str(torch_device),
            )
        return make_check(
            name,
            report["passed"],
            report["max_rel_diff"],
            report["tolerance"],
            reason,
            judged=report["judged"],
            steps=report["steps"],
        )

    return guarded(name, run, dtype=dtype, steps=s.trajectory_steps)


__all__ = ["no_float64", "parity_checks", "trajectory_check"]
