"""What both backends' ``distributed`` modules share: the coordinator address, a bounded wait for
it, and the thread count of each process.

``vae_jax.distributed`` and ``vae_torch.distributed`` join processes with their framework's own
engine (``jax.distributed.initialize``, ``torch.distributed.init_process_group``). Both engines
can wait long for a coordinator that is not there (JAX then terminates the whole process instead
of raising), so a process other than the coordinator first checks, with plain TCP connects for at
most ``timeout_s``, that something listens at the address, and raises ``DeviceError`` otherwise.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from collections.abc import Mapping

import numpy as np

from vae_common.errors import ConfigError, DeviceError

# Seconds a process waits for the coordinator and for the others to join.
DEFAULT_TIMEOUT_S = 300.0


def parse_coordinator(address: str) -> tuple[str, int]:
    """``"host:port"`` (an IPv6 host in brackets: ``"[::1]:1234"``) -> ``(host, port)``.

    Raises:
      ConfigError: no port, or a port outside 1..65535.
    """
    host, sep, port = str(address).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"coordinator address must be host:port, got {address!r}")
    return host, int(port)


def check_timeout(timeout_s: float) -> float:
    """``timeout_s`` as a positive finite float; ``ConfigError`` otherwise."""
    value = float(timeout_s)
    if not 0 < value < float("inf"):
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return value


def wait_for_coordinator(
    address: str, timeout_s: float, process_id: int, num_processes: int
) -> None:
    """Return once a TCP connection to ``address`` (``host:port``) succeeds; retried every
    0.1 s for at most ``timeout_s`` seconds (the coordinator may start after this process).

    Raises:
      DeviceError: nothing accepted a connection in time; the message names the address, the
        process and the time waited.
    """
    host, port = parse_coordinator(address)
    deadline = time.monotonic() + check_timeout(timeout_s)
    last: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return
        except OSError as exc:
            last = exc
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    raise DeviceError(
        f"process {process_id} of {num_processes}: the coordinator {host}:{port} did not answer "
        f"within {timeout_s:g} s ({last}); start process 0 there first, or check the address "
        "and the firewall"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (the OS picks it), for a coordinator
    started right after; another program may still take it in between."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def local_torchrun(n: int) -> list[str]:
    """The command that starts ``n`` torch ranks on this host (append the rank's module and
    arguments): ``python -m torch.distributed.run`` with one node and a free port of 127.0.0.1
    for its rendezvous."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(n),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    ]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_process(local_processes: int) -> int:
    """Intra-op threads for each of ``local_processes`` processes sharing this host's cores:
    ``max(1, cores // local_processes)``: processes whose threads outnumber the cores spin
    against each other and run many times slower."""
    return max(1, usable_cores() // max(1, int(local_processes)))


def state_digest(state: Mapping[str, np.ndarray]) -> str:
    """A SHA-256 of canonical weights (names, shapes, float64 values), to check that every
    process starts from the same ones."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.ascontiguousarray(np.asarray(state[name], np.float64))
        h.update(f"{name}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "check_timeout",
    "free_port",
    "local_torchrun",
    "parse_coordinator",
    "state_digest",
    "threads_per_process",
    "usable_cores",
    "wait_for_coordinator",
]
