"""The text table of a ``vae check`` report."""

from __future__ import annotations

from typing import Any


def _figure(c: dict[str, Any]) -> str:
    if c["figure"] is None:
        return "-"
    if c.get("unit") == "samples/s":
        return f"{c['figure']:,.0f}/s"
    return f"{c['figure']:.2e}"


def format_table(report: dict[str, Any]) -> str:
    """The report as text: the device and versions, one line per check (result, figure,
    tolerance), the reasons below, and a summary line."""
    d, v = report["device"], report["versions"]
    lines = [
        f"vae check: torch on {d['torch']} ({d['name']}), JAX on {d['jax']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None),
    ]
    rows = [("check", "result", "figure", "tolerance")]
    for c in report["checks"]:
        result = "skipped" if c["skipped"] else ("passed" if c["passed"] else "FAILED")
        tol = "-" if c["tolerance"] is None else f"{c['tolerance']:.1e}"
        rows.append((c["name"], result, _figure(c), tol))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    table.insert(1, "-" * len(table[0]))
    lines += table
    reasons: dict[str, list[str]] = {}
    for c in report["checks"]:
        if c["reason"]:
            reasons.setdefault(c["reason"], []).append(c["name"])
    for reason, names in reasons.items():
        lines.append(f"  {', '.join(names)}: {reason}")
    n_pass = sum(c["passed"] for c in report["checks"])
    lines.append(
        f"{n_pass} passed, {len(report['failed'])} failed, {len(report['skipped'])} skipped "
        f"in {report['elapsed_s']:.0f} s: " + ("PASSED" if report["passed"] else "FAILED")
    )
    return "\n".join(lines)


__all__ = ["format_table"]
