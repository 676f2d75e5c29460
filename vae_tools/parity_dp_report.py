"""The comparisons of a data-parallel parity report and its text table."""

from __future__ import annotations

from typing import Any

from vae_common.compare import max_abs_diff, rel_diff


def compare_runs(
    a: dict[str, Any], b: dict[str, Any], dtype: str, tolerance: float, judge_params: bool
) -> dict[str, Any]:
    """``a`` against the reference ``b`` (each ``{"losses", "params"}``): the largest relative
    difference over the per-step losses and over each parameter (``vae_common.compare``).
    ``judge_params`` False judges the loss curve only (float32; see
    ``vae_common.compare.TRAJECTORY_TOLERANCES``)."""
    curve = max(rel_diff(x, y) for x, y in zip(a["losses"], b["losses"], strict=True))
    params = {
        n: {
            "max_abs_diff": max_abs_diff(a["params"][n], p),
            "max_rel_diff": rel_diff(a["params"][n], p),
        }
        for n, p in b["params"].items()
    }
    worst_param = max(p["max_rel_diff"] for p in params.values())
    judged = max(curve, worst_param) if judge_params else curve
    return {
        "loss_curve": {
            "a": [float(v) for v in a["losses"]],
            "b": [float(v) for v in b["losses"]],
            "max_rel_diff": curve,
        },
        "params": params,
        "judged": "params, loss curve" if judge_params else "loss curve",
        "max_rel_diff": judged,
        "tolerance": tolerance,
        "passed": bool(judged <= tolerance),
    }


def format_table(report: dict[str, Any]) -> str:
    """One line per comparison: what was compared, the figure, the tolerance, the verdict."""
    n = report["devices"]
    rows = [("comparison", "max rel diff", "tolerance", "")]
    for backend in ("jax", "torch"):
        for path, c in report[backend].items():
            rows.append((f"{backend} {path}: {n} devices vs 1", *_cells(c)))
    for k, c in report["jax_vs_torch"].items():
        rows.append((f"jax vs torch run_steps, {n if k == 'N' else 1} device(s)", *_cells(c)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>12}  {r[2]:>9}  {r[3]}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines.append(f"{report['dtype']}, {report['steps']} steps: {verdict}")
    return "\n".join(lines)


def _cells(c: dict[str, Any]) -> tuple[str, str, str]:
    return f"{c['max_rel_diff']:.3e}", f"{c['tolerance']:.0e}", "ok" if c["passed"] else "FAILED"


__all__ = ["compare_runs", "format_table"]
