"""Where a JAX ``vae train --devices N`` trains (``vae_tools.run_launch``): this process's
devices, N host devices forced on the CPU (``FORCE_FLAG``, here or in a subprocess started by
``reexec_jax``), or every process joined by ``jax.distributed``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from vae_common.distributed import parse_coordinator
from vae_common.errors import DeviceError
from vae_tools.run_place import CLI_MODULE, JOINED, Placement, check_batch, train_argv

FORCE_FLAG = "--xla_force_host_platform_device_count"
# Set in the subprocess reexec_jax starts (to N): it does not start another one.
FORCED_ENV = "VAE_TWIN_FORCED_HOST_DEVICES"


def place_jax(opts: dict[str, Any]) -> Placement:
    """``place`` for the jax backend (see ``vae_tools.run_launch``)."""
    n = opts["devices"]
    coordinator = opts["coordinator"]
    several = any(opts[k] is not None for k in ("coordinator", "num_processes", "process_id"))
    if several or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if coordinator not in (None, "auto"):
            parse_coordinator(coordinator)
        from vae_jax import distributed

        distributed.initialize(
            None if coordinator == "auto" else coordinator,
            opts["num_processes"],
            opts["process_id"],
            device=_jax_platform_name(opts["device"]),
        )
        JOINED.append("jax")
        import jax

        from vae_jax.device import select_device

        platform = select_device(opts["device"]).platform
        n = n if n is not None else len(jax.devices(platform))
        if n > 1:
            check_batch(opts, n)
        return Placement("here", n if n > 1 else None, distributed.process_index(), "jax")
    if n is None or n == 1:
        return Placement("here")
    check_batch(opts, n)
    if "jax" not in sys.modules and FORCE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        # JAX has not started here: its CPU platform gets the N devices when it does (no other
        # platform is affected).
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FORCE_FLAG}={n}".strip()
    import jax

    from vae_jax.device import select_device

    platform = select_device(opts["device"]).platform
    have = len(jax.devices(platform))
    if have >= n:
        return Placement("here", n)
    if platform == "cpu" and FORCED_ENV not in os.environ:
        return Placement("reexec", n)
    raise DeviceError(
        f"--devices {n}, but JAX has {have} {platform} device(s) here"
        + (f" (with {FORCE_FLAG}={os.environ[FORCED_ENV]})" if FORCED_ENV in os.environ else "")
    )


def _jax_platform_name(device: str | None) -> str | None:
    return None if device in (None, "", "auto") else device


def reexec_jax(opts: dict[str, Any], n: int) -> int:
    """Run this ``vae train`` again in a subprocess whose JAX has ``n`` forced host CPU devices;
    returns its exit status (its output is this process's)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FORCE_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{FORCE_FLAG}={n}"])
    env["JAX_PLATFORMS"] = "cpu"
    env[FORCED_ENV] = str(n)
    cmd = [sys.executable, "-m", CLI_MODULE, "train", *train_argv(opts)]
    status = subprocess.run(cmd, env=env, check=False).returncode
    if status < 0:
        print(
            f"vae train: the JAX process with {n} CPU devices was killed by "
            f"{signal.Signals(-status).name}",
            file=sys.stderr,
        )
        return 1
    return status


__all__ = ["FORCED_ENV", "FORCE_FLAG", "place_jax", "reexec_jax"]
