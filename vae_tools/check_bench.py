"""The benchmark part of ``vae check``: every training mode timed by ``vae_tools.bench.run_bench``
(the records are the ones ``vae bench --json`` writes), the modes that cannot run here skipped
with the reason."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from vae_tools.check_result import make_check
from vae_tools.check_settings import CheckSettings

# The training modes that run on a GPU only, and why (the bench skips them elsewhere).
CUDA_ONLY = {("torch", "cudagraph"): "CUDA graphs exist on CUDA devices only"}


def skipped_modes(device: str) -> dict[tuple[str, str], str]:
    """The training modes that cannot run on ``device`` here, each with its reason."""
    from vae_torch import _compile

    skipped = {pair: why for pair, why in CUDA_ONLY.items() if device != "cuda"}
    if device == "cpu" and _compile.cpu_compiler() is None:
        skipped["torch", "compile"] = (
            "torch.compile on the CPU needs a C++ compiler ($CXX, else g++) and none was "
            "found (vae_torch.cpu_compiler)"
        )
    if device in ("cuda", "xpu") and importlib.util.find_spec("triton") is None:
        skipped["torch", "compile"] = f"torch.compile on {device} needs triton, not installed"
    return skipped


def bench_checks(
    s: CheckSettings,
    device: str,
    jax_on_cpu: bool,
    jax_note: str | None,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """Every training mode timed: ``(checks, records, host)``. All modes run interleaved in one
    ``run_bench``; if that raises, each mode runs alone, so the failing one is named. With JAX
    on the CPU for a CUDA device, its rows are timed apart on the CPU."""
    from vae_tools import bench
    from vae_tools.bench.run import ORDER

    skipped = skipped_modes(device)
    every = [(b, m) for b in ORDER for m in bench.MODES[b]]
    chosen = [pair for pair in every if pair not in skipped]
    groups: list[tuple[str, list[tuple[str, str]]]] = [(device, chosen)]
    if jax_on_cpu and device != "xpu":  # bench runs JAX's xpu rows on the CPU by itself
        groups = [
            (device, [p for p in chosen if p[0] != "jax"]),
            ("cpu", [p for p in chosen if p[0] == "jax"]),
        ]

    def run(on: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        modes: dict[str, list[str]] = {}
        for b, m in pairs:
            modes.setdefault(b, []).append(m)
        return bench.run_bench(
            backends=tuple(modes),
            device=on,
            batch_sizes=(s.bench_batch_size,),
            samples=s.bench_samples,
            repeats=s.bench_repeats,
            untimed_steps=s.bench_untimed_steps,
            modes=modes,
            config=s.mlp,
            log=log,
        )

    checks, records, host = [], [], None
    for on, pairs in groups:
        if not pairs:
            continue
        t0 = time.perf_counter()
        try:
            results: list[tuple[list[tuple[str, str]], dict[str, Any] | None, str | None]] = [
                (pairs, run(on, pairs), None)
            ]
        except Exception:  # find the failing mode: each alone
            results = []
            for pair in pairs:
                try:
                    results.append(([pair], run(on, [pair]), None))
                except Exception as exc:
                    results.append(([pair], None, f"{type(exc).__name__}: {exc}"))
        seconds = (time.perf_counter() - t0) / len(pairs)  # the group's time, shared out
        for ran, result, error in results:
            if result is not None:
                records.extend(result["records"])
                host = host or result["host"]
            for b, m in ran:
                rec = None if result is None else _record_of(result["records"], b, m)
                note = jax_note if b == "jax" and (on != device or device == "xpu") else None
                if rec is None:
                    why = error or "the benchmark wrote no record for it"
                    check = make_check(f"bench/{b}/{m}", False, reason=why, device=on)
                else:
                    check = make_check(
                        f"bench/{b}/{m}",
                        True,
                        rec["samples_per_s"],
                        None,
                        note,
                        device=rec["device"],
                        unit="samples/s",
                    )
                check["seconds"] = seconds
                checks.append(check)
    for (b, m), why in skipped.items():
        checks.append(make_check(f"bench/{b}/{m}", None, reason=why, device=device))
    order = {f"bench/{b}/{m}": i for i, (b, m) in enumerate(every)}
    checks.sort(key=lambda c: order.get(c["name"], len(order)))
    return checks, records, host


def _record_of(records: list[dict[str, Any]], backend: str, mode: str) -> dict[str, Any] | None:
    return next((r for r in records if (r["backend"], r["mode"]) == (backend, mode)), None)


__all__ = ["CUDA_ONLY", "bench_checks", "skipped_modes"]
