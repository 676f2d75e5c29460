"""What every placement of ``vae train`` shares (``vae_tools.run_launch``): where it trains
(``Placement``), the process group it joined, the batch split over the devices, the effective
options as a command line for another process (``train_argv``), and the end of the process
(``exit_process``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from vae_common.errors import UsageError
from vae_tools.options_defaults import TRAIN_DEFAULTS, UNSET, option_name

# The processes torch.distributed.run starts: ``python -m vae_tools.cli train ...``.
CLI_MODULE = "vae_tools.cli"
# The backends whose process group this process joined (``place_jax``, ``place_torch``).
JOINED: list[str] = []


@dataclass(frozen=True)
class Placement:
    """Where this ``vae train`` trains.

    Attributes:
      mode: ``"here"`` (this process trains, alone or as one of a group it joined),
        ``"reexec"`` (JAX: run again with forced host devices) or ``"launch"`` (torch: start the
        ranks).
      devices: ``run.train``'s ``devices`` (None: one device).
      rank: this process's index among the processes it joined (0: it writes the run
        directory).
      joined: the backend whose process group ``place`` joined, or None.
    """

    mode: str
    devices: int | None = None
    rank: int = 0
    joined: str | None = None

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def leave(self) -> None:
        """Leave the process group ``place`` joined (nothing otherwise)."""
        if self.joined is not None:
            import importlib

            importlib.import_module(f"vae_{self.joined}.distributed").shutdown()


def check_batch(opts: dict[str, Any], n: int) -> None:
    """``UsageError`` unless ``--batch-size`` splits over ``n`` devices (the last, smaller batch
    of an epoch need not: the run computes it whole on every device)."""
    if opts["batch_size"] % n:
        raise UsageError(
            f"--batch-size {opts['batch_size']} does not split over {n} devices; use a multiple "
            f"of {n}"
        )


def train_argv(opts: dict[str, Any]) -> list[str]:
    """The effective options ``opts`` of ``vae train`` as its command line (without the
    ``train``), ``--flag=value`` for each option set: the same effective options again in
    another process (``--config`` is folded in)."""
    argv: list[str] = []
    for dest, value in opts.items():
        if dest == "config" or dest not in TRAIN_DEFAULTS:
            continue
        if value is None or value is False or (dest in UNSET and value == UNSET[dest]):
            continue
        flag = option_name(dest)
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv.append(f"{flag}={','.join(str(v) for v in value)}")
        elif isinstance(value, float):
            argv.append(f"{flag}={value!r}")
        else:
            argv.append(f"{flag}={value}")
    return argv


def exit_process(status: int) -> NoReturn:
    """End the ``vae`` process with ``status``. A torch rank (it joined a process group) leaves
    with ``os._exit`` once its output is flushed: a gloo or inductor worker thread still
    joinable when the interpreter destroys its static objects aborts the process now and then,
    after its work is done."""
    if "torch" in JOINED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


__all__ = ["CLI_MODULE", "JOINED", "Placement", "check_batch", "exit_process", "train_argv"]
