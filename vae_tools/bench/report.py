"""The bench result as a text table, a JSON file and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vae_common.checkpoint import atomic_write_bytes

COLUMNS = (
    "backend",
    "mode",
    "batch",
    "samples/s",
    "x ref",
    "of ceiling",
    "GFLOP/s",
    "compile s",
    "spread",
)


def _reference_rate(result: dict[str, Any], batch: str) -> float | None:
    return next(
        (
            r["samples_per_s"]
            for r in result["records"]
            if r["backend"] == "reference" and str(r["batch_size"]) == batch
        ),
        None,
    )


def format_table(result: dict[str, Any]) -> str:
    """One row per record (``x ref`` is ``-`` without a reference row, ``of ceiling`` the
    record's ``ceiling_fraction``, ``-`` without one), then the ceilings per batch size, a line
    per data-parallel record (``dp_lines``) and a line on the host."""
    rows = [COLUMNS]
    for r in result["records"]:
        ratio = r.get("ratio_to_reference")
        fraction = r.get("ceiling_fraction")
        rows.append(
            (
                r["backend"],
                r["mode"],
                str(r["batch_size"]),
                f"{r['samples_per_s']:,.0f}",
                f"{ratio:.2f}" if ratio else "-",
                f"{fraction:.2f}" if fraction else "-",
                f"{r['gflops']:.1f}",
                f"{r['compile_s']:.2f}",
                f"{100 * r['spread']:.1f}%",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            c.rjust(w) if i > 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    h = result["host"]
    for batch, ceiling in (h.get("gemm_ceiling_samples_per_s") or {}).items():
        ref = _reference_rate(result, batch)
        if ceiling:
            lines.append(
                f"GEMM-only ceiling, batch {batch}: {ceiling:,.0f} samples/s"
                + (f" = {ceiling / ref:.2f} x ref" if ref else "")
                + " (the step's matrix products alone, nothing else, in torch, timed in the"
                " rows' interleaved rounds)"
            )
        lines.extend(_other_ceilings(h, batch))
    lines.extend(dp_lines(result["records"]))
    lines.extend(precision_lines(result["records"]))
    peak = h.get("peak_gflops")
    lines.append(
        f"{h.get('processor')} x{h.get('cpu_count')}, device {h['device']}, torch "
        f"{h.get('torch')} ({h.get('torch_threads')} threads), jax {h.get('jax')}; "
        f"{h['flops_per_sample'] / 1e6:.2f} MFLOP per training sample"
        + (f"; measured matmul peak {peak:.0f} GFLOP/s" if peak else "")
    )
    return "\n".join(lines)


def _other_ceilings(host: dict[str, Any], batch: str) -> list[str]:
    """The products at their fastest, the ceiling with one fused Adam pass, and those of
    oneDNN's and XLA's products, where measured."""
    lines = []
    best = (host.get("gemm_best_of_samples_per_s") or {}).get(batch)
    if best:
        lines.append(
            f"  each product timed alone, best of its loops: {best:,.0f} samples/s (hot caches, "
            "nothing between the products)"
        )
    adam = (host.get("gemm_adam_ceiling_samples_per_s") or {}).get(batch)
    if adam:
        lines.append(
            f"  with one fused Adam update ({1e3 * host['adam_floor_s']:.3f} ms): {adam:,.0f} "
            "samples/s (the bound for a step that also updates its weights)"
        )
    onednn = (host.get("onednn_gemm_ceiling_samples_per_s") or {}).get(batch)
    if onednn:
        lines.append(
            f"  the same products through torch's oneDNN matmul, best of loops: {onednn:,.0f} "
            "samples/s"
        )
    xla = (host.get("xla_gemm_ceiling_samples_per_s") or {}).get(batch)
    if xla:
        lines.append(
            f"  the same products as XLA runs them (one jitted dot each), best of loops: "
            f"{xla:,.0f} samples/s"
        )
    return lines


def precision_lines(records: list[dict[str, Any]]) -> list[str]:
    """When a row trained in another precision than float32: which, and each distinct
    ``precision_note`` (none for an all-float32 result)."""
    reduced = sorted(
        {r["precision"] for r in records if r.get("precision", "float32") != "float32"}
    )
    if not reduced:
        return []
    lines = [
        f"training precision {', '.join(reduced)} in the library rows (the reference row and "
        "the GEMM-only ceiling: float32)"
    ]
    notes = {r["precision_note"] for r in records if r.get("precision_note")}
    return lines + [f"note: {n}" for n in sorted(notes)]


def dp_lines(records: list[dict[str, Any]]) -> list[str]:
    """For each data-parallel record (one with ``devices``): its efficiency and what it is
    measured against, how it ran, and on the CPU how many cores its devices shared."""
    lines = []
    for r in records:
        if "devices" not in r:
            continue
        n = r["devices"]
        shared = r.get("host_cores")
        lines.append(
            f"{r['backend']}/{r['mode']}, batch {r['batch_size']} ({r['per_device_batch']} per "
            f"device): efficiency {r['efficiency']:.2f} = {r['samples_per_s']:,.0f} / ({n} x "
            f"{r['single_device_samples_per_s']:,.0f} of {r['backend']}/"
            f"{r['single_device_mode']}); {r['launch']}"
            + ("" if r["interleaved"] else "; not interleaved with the 1-device rows")
            + (
                f"; the {n} devices share {shared} CPU core(s): not a speed-up measurement"
                if shared
                else ""
            )
        )
    return lines


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """``result`` as indented JSON, written atomically; a NaN or infinity is refused
    (``ValueError``) rather than written as the non-JSON ``NaN``."""
    atomic_write_bytes(path, json.dumps(result, indent=2, allow_nan=False).encode())


def save_plot(result: dict[str, Any], path: str | Path) -> None:
    """A bar chart of samples/s per record, each bar labelled with its ratio to the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["records"]
    labels = [f"{r['backend']}/{r['mode']}\nbatch {r['batch_size']}" for r in recs]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(recs)), 4))
    colors = {"jax": "tab:blue", "torch": "tab:orange", "reference": "tab:gray"}
    ax.bar(
        range(len(recs)),
        [r["samples_per_s"] for r in recs],
        color=[colors[r["backend"]] for r in recs],
    )
    for i, r in enumerate(recs):
        if r.get("ratio_to_reference"):
            ax.text(
                i,
                r["samples_per_s"],
                f"{r['ratio_to_reference']:.2f}x",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(range(len(recs)), labels, fontsize=7)
    ax.set_ylabel("training samples / s")
    h = result["host"]
    ax.set_title(
        f"{recs[0]['arch']} VAE, {recs[0]['dtype']}, {h['device']} "
        f"({h.get('gpu') or h.get('processor')})",
        fontsize=9,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
