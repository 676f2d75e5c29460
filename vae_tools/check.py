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

The parts live beside this module: ``check_settings`` (sizes per device), ``check_machine``
(versions, device names, where JAX runs, precision switches), ``check_result`` (one check),
``check_parity`` (parity and trajectory), ``check_bench`` (the benchmark) and ``check_table``
(the text table); their public names are importable from here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from vae_common.errors import UsageError
from vae_tools.check_bench import bench_checks
from vae_tools.check_machine import (
    cpu_model,
    device_name,
    jax_device_for,
    precision_settings,
    versions,
)
from vae_tools.check_parity import parity_checks, trajectory_check
from vae_tools.check_settings import DEVICES, CheckSettings, default_settings, settings_dict
from vae_tools.check_table import format_table

REPORT_FORMAT = "vae-twin-check/1"


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
    checks, records, host = bench_checks(s, device, jax_note is not None, jax_note, log)
    log("parity: MLP and conv, one gradient each")
    checks += parity_checks(s, torch_device, jax_device, jax_note)
    log(f"trajectory: {s.trajectory_steps} Adam steps")
    checks.append(trajectory_check(s, torch_device, jax_device, jax_note))
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
        "settings": settings_dict(s),
        "checks": checks,
        "bench": records,
        "bench_host": host,
        "passed": not failed,
        "failed": failed,
        "skipped": [c["name"] for c in checks if c["skipped"]],
        "elapsed_s": time.perf_counter() - t0,
    }


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
