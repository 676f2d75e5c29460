"""``vae check``: one command that proves parity and measures speed on the machine at hand.

On one device (``cpu``, ``cuda`` or ``xpu``) it runs, in this order:

1. a short benchmark of every training mode (``vae_tools.bench.run_bench``; the records are the
   ones ``vae bench --json`` writes), first, while the process is as a plain training run has it
   (the float64 checks switch JAX to 64-bit mode, process-wide);
2. the parity checks (``vae_tools.parity``) of the MLP and the conv model: float64 where the
   device has it, float32 with TF32 off, and the MLP in the bf16 training precision;
3. a short training-trajectory check (``vae_tools.trajectory``), float64 where the device has
   it, else float32.

Each check is ``{"name", "passed", "skipped", "figure", "tolerance", "reason"}``: a skipped one
says why (no float64 on this XPU, no C++ compiler for ``torch.compile`` on the CPU, CUDA graphs
off CUDA...), and so does a check whose JAX side ran on the CPU because JAX has no backend for
the device. A check that raises is a failed check with the exception as its reason (and its
traceback in the report). ``run_check`` raises ``DeviceError`` only for a device this machine
does not have, before any work.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vae_common.config import VAEConfig
from vae_common.errors import DeviceError, UsageError
from vae_common.precision import JAX_MATMUL_PRECISION

REPORT_FORMAT = "vae-twin-check/1"
DEVICES = ("cpu", "cuda", "xpu")
# The distributions whose versions the report names (None when one is not installed).
PACKAGES = ("numpy", "jax", "jaxlib", "flax", "optax", "torch", "safetensors", "vae-twin")
# The training modes that run on a GPU only, and why (the bench skips them elsewhere).
CUDA_ONLY = {("torch", "cudagraph"): "CUDA graphs exist on CUDA devices only"}


@dataclass(frozen=True)
class CheckSettings:
    """The sizes of one ``vae check`` run.

    Attributes:
      mlp, conv: the two models the parity checks compare (the MLP also for the trajectory
        and the benchmark).
      batch_size: the MLP's parity and trajectory batch.
      conv_batch_size: the conv model's parity batch.
      trajectory_steps: Adam steps of the trajectory check.
      bench_samples: images per benchmark epoch (synthetic, ``vae_tools.bench.make_data``).
      bench_batch_size: the benchmark's batch.
      bench_repeats: timed epochs per training mode.
      bench_untimed_steps: untimed steps per mode before timing (whole epochs, at least one).
    """

    mlp: VAEConfig
    conv: VAEConfig
    batch_size: int = 128
    conv_batch_size: int = 128
    trajectory_steps: int = 20
    bench_samples: int = 60000
    bench_batch_size: int = 128
    bench_repeats: int = 5
    bench_untimed_steps: int = 900


def default_settings(device: str, quick: bool = False) -> CheckSettings:
    """The sizes for ``device``: the project's default models (MLP 784-400-20, the conv model)
    at batch 128; on a GPU the full benchmark (60,000-sample epochs, 900 untimed steps, 5
    repeats); on the CPU a short one (2,560-sample epochs of 20 steps, one untimed epoch, 3
    repeats) and the conv parity at batch 32, so that the check takes about a minute there.
    ``quick``: tiny 8x8 models and a 64-sample benchmark, which checks that everything runs
    (the figures mean little)."""
    from vae_tools.bench import default_config

    if device not in DEVICES:
        raise UsageError(f"device must be one of {DEVICES}, got {device!r}")
    if quick:
        return CheckSettings(
            mlp=VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=4),
            conv=VAEConfig(
                input_shape=(1, 8, 8), hidden=(16,), latent_dim=4, arch="conv", conv_channels=(4, 8)
            ),
            batch_size=8,
            conv_batch_size=8,
            trajectory_steps=3,
            bench_samples=64,
            bench_batch_size=16,
            bench_repeats=1,
            bench_untimed_steps=0,
        )
    mlp, conv = default_config("mlp"), default_config("conv")
    if device == "cpu":
        return CheckSettings(
            mlp,
            conv,
            conv_batch_size=32,
            bench_samples=2560,
            bench_repeats=3,
            bench_untimed_steps=20,
        )
    return CheckSettings(mlp, conv)


def versions() -> dict[str, str | None]:
    """Python's version and each of ``PACKAGES``' installed version (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """torch's name for ``device`` (``torch.cuda.get_device_name``, ``torch.xpu.
    get_device_name``), or the CPU model."""
    import torch

    device = torch.device(device)
    if device.type in ("cuda", "xpu"):
        index = device.index if device.index is not None else 0
        return str(getattr(torch, device.type).get_device_name(index))
    return cpu_model()


def jax_device_for(device: str) -> tuple[Any, str | None]:
    """The JAX device that stands for ``device`` and, when it is the CPU instead, why: JAX has
    no Intel GPU backend, and a CUDA device needs JAX's CUDA build (``jax[cuda]``)."""
    from vae_jax.device import select_device

    if device == "xpu":
        return select_device("cpu"), "JAX has no backend for xpu: its side runs on the CPU"
    try:
        return select_device(device), None
    except DeviceError:
        return select_device("cpu"), (
            f"JAX has no {device} device here (is JAX's CUDA build, jax[cuda], installed?): "
            "its side runs on the CPU"
        )


def _result(
    name: str,
    passed: bool | None,
    figure: float | None = None,
    tolerance: float | None = None,
    reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A check: ``passed`` None means skipped (``reason`` then says why)."""
    return {
        "name": name,
        "passed": bool(passed) if passed is not None else False,
        "skipped": passed is None,
        "figure": figure,
        "tolerance": tolerance,
        "reason": reason,
        **extra,
    }


def _guarded(name: str, fn: Callable[[], dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """``fn()``'s check, timed; an exception is a failed check that names it."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a check that crashes on new hardware is a finding, not a stop
        result = _result(
            name,
            False,
            reason=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            **extra,
        )
    result["seconds"] = time.perf_counter() - t0
    return result


def _parity_checks(
    s: CheckSettings, torch_device: Any, jax_device: Any, jax_note: str | None
) -> list[dict[str, Any]]:
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
                out.append(_result(name, None, reason=_no_float64(torch_device), **extra))
                continue
            run = functools.partial(
                _parity_one, name, config, dtype, precision, s, torch_device, jax_device, jax_note
            )
            out.append(_guarded(name, run, **extra))
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
    return _result(
        name,
        report["passed"],
        report["max_rel_diff"],
        report["tolerance"],
        jax_note,
        judged=report.get("judged", "loss, per-example terms, every gradient"),
    )


def _no_float64(torch_device: Any) -> str:
    return (
        f"{torch_device} ({device_name(torch_device)}) has no float64 kernels "
        "(vae_torch.supports_float64)"
    )


def _trajectory_check(
    s: CheckSettings, torch_device: Any, jax_device: Any, jax_note: str | None
) -> dict[str, Any]:
    import jax

    from vae_tools.trajectory import check_trajectory
    from vae_torch.device import supports_float64

    dtype = "float64" if supports_float64(torch_device) else "float32"
    name = f"trajectory/mlp/{dtype}"
    reason = jax_note
    if dtype == "float32":
        reason = "; ".join(
            r for r in (_no_float64(torch_device) + ": float32, loss curve only", jax_note) if r
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
        return _result(
            name,
            report["passed"],
            report["max_rel_diff"],
            report["tolerance"],
            reason,
            judged=report["judged"],
            steps=report["steps"],
        )

    return _guarded(name, run, dtype=dtype, steps=s.trajectory_steps)


def _skipped_modes(device: str) -> dict[tuple[str, str], str]:
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


def _bench(
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

    skipped = _skipped_modes(device)
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
                    check = _result(f"bench/{b}/{m}", False, reason=why, device=on)
                else:
                    check = _result(
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
        checks.append(_result(f"bench/{b}/{m}", None, reason=why, device=device))
    order = {f"bench/{b}/{m}": i for i, (b, m) in enumerate(every)}
    checks.sort(key=lambda c: order.get(c["name"], len(order)))
    return checks, records, host


def _record_of(records: list[dict[str, Any]], backend: str, mode: str) -> dict[str, Any] | None:
    return next((r for r in records if (r["backend"], r["mode"]) == (backend, mode)), None)


def precision_settings() -> dict[str, Any]:
    """What the figures were computed with: the process-wide switches as the checks leave them
    and the policy each part of the check ran under."""
    import jax
    import torch

    return {
        "parity_and_trajectory": (
            "float64 and float32 with TF32 off: torch.backends.cuda.matmul.allow_tf32 = "
            "torch.backends.cudnn.allow_tf32 = False, jax.default_matmul_precision("
            f"{JAX_MATMUL_PRECISION['float32']!r}); bf16: torch.autocast / Flax bfloat16 layers "
            "over float32 weights"
        ),
        "bench": "float32 training precision (TF32 off in every row)",
        "torch": {
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "jax": {
            # A context-manager flag: jax.config.read refuses it, and the stubs lack it.
            "default_matmul_precision": str(
                getattr(jax.config, "jax_default_matmul_precision")  # noqa: B009
            ),
            "enable_x64": bool(jax.config.read("jax_enable_x64")),
        },
    }


def run_check(
    device: str = "cpu",
    quick: bool = False,
    settings: CheckSettings | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every check on ``device`` (``"cpu"``, ``"cuda"`` or ``"xpu"``); the JSON-ready report.

    Returns:
      ``{"format", "device", "versions", "precision", "settings", "checks", "bench",
      "bench_host", "passed", "failed", "skipped", "elapsed_s"}``: ``device`` holds torch's
      device and its name, the JAX device and the note when JAX runs on the CPU instead;
      ``bench`` the records of ``vae bench --json``; ``passed`` is true when no check failed
      (skipped ones do not count).

    Raises:
      DeviceError: ``device`` does not exist here (torch has no usable device of that kind).
    """
    t0 = time.perf_counter()
    if device not in DEVICES:
        raise UsageError(f"device must be one of {DEVICES}, got {device!r}")
    # JAX would otherwise take 75% of the GPU's memory before torch gets any (PITFALLS).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from vae_torch.device import select_device

    torch_device = select_device(device)  # DeviceError for a device this machine lacks
    s = settings or default_settings(device, quick)
    jax_device, jax_note = jax_device_for(device)
    log(f"vae check on {torch_device} ({device_name(torch_device)}); JAX on {jax_device}")
    log("benchmark: every training mode")
    checks, records, host = _bench(s, device, jax_note is not None, jax_note, log)
    log("parity: MLP and conv, one gradient each")
    checks += _parity_checks(s, torch_device, jax_device, jax_note)
    log(f"trajectory: {s.trajectory_steps} Adam steps")
    checks.append(_trajectory_check(s, torch_device, jax_device, jax_note))
    failed = [c["name"] for c in checks if not c["passed"] and not c["skipped"]]
    return {
        "format": REPORT_FORMAT,
        "device": {
            "requested": device,
            "torch": str(torch_device),
            "name": device_name(torch_device),
            "jax": str(jax_device),
            "jax_platform": jax_device.platform,
            "jax_note": jax_note,
        },
        "versions": versions(),
        "precision": precision_settings(),
        "settings": _settings_dict(s),
        "checks": checks,
        "bench": records,
        "bench_host": host,
        "passed": not failed,
        "failed": failed,
        "skipped": [c["name"] for c in checks if c["skipped"]],
        "elapsed_s": time.perf_counter() - t0,
    }


def _settings_dict(s: CheckSettings) -> dict[str, Any]:
    out = asdict(s)
    out["mlp"], out["conv"] = s.mlp.to_dict(), s.conv.to_dict()
    return out


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


__all__ = [
    "DEVICES",
    "REPORT_FORMAT",
    "CheckSettings",
    "cpu_model",
    "default_settings",
    "device_name",
    "format_table",
    "jax_device_for",
    "precision_settings",
    "run_check",
    "versions",
]
