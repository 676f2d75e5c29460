"""Where ``vae train`` runs when it trains on several devices (``--devices N``): ``place`` decides,
before any work, and joins this process to the others when it is one of several.

- **JAX, one host**: the N devices are this process's. On a machine whose JAX platform has fewer
  than N devices of the CPU, N host devices are forced
  (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), which JAX reads only when it starts:
  set here when JAX has not started in this process, else ``vae train`` runs itself again in a
  subprocess with the flag set (``reexec_jax``). More devices than the platform has (GPUs) is
  refused.
- **JAX, several hosts**: ``--coordinator``/``--num-processes``/``--process-id`` (or
  ``JAX_COORDINATOR_ADDRESS``, or ``--coordinator auto`` for JAX's cluster environments: Slurm,
  Open MPI, Kubernetes, Cloud TPU) join every process through ``jax.distributed.initialize``
  (``vae_jax.distributed.initialize``); N defaults to every device of every process.
- **torch**: a process started by ``torchrun`` (``WORLD_SIZE`` set) is one rank: it joins the
  process group (``vae_torch.distributed.initialize``) and ``--devices``, if given, must equal
  the world size. Otherwise ``--devices N`` launches N ranks of this same command on this host
  through ``torch.distributed.run`` (``launch_torch``), after the checks ``vae train`` makes
  before any work (the devices, the batch split, the run directory, the data); when a rank
  fails, the launcher stops the others and names the rank.

Every process runs the same effective options: ``train_argv`` writes them back as a command line.

The JAX part is in ``vae_tools.run_launch_jax``, the torch part (the launcher and its failure
report) in ``vae_tools.run_launch_torch``, and what both share (``Placement``, ``train_argv``,
``exit_process``) in ``vae_tools.run_place``; their public names are re-exported here.
"""

from __future__ import annotations

from typing import Any

from vae_tools.run_launch_jax import FORCE_FLAG, FORCED_ENV, place_jax, reexec_jax
from vae_tools.run_launch_torch import failure_report, launch_torch, place_torch
from vae_tools.run_place import CLI_MODULE, Placement, exit_process, train_argv


def place(opts: dict[str, Any]) -> Placement:
    """Decide where the run of the effective options ``opts`` trains (see the module docstring);
    joins this process to its group when it is one of several.

    Raises:
      UsageError: ``--devices`` that differs from torchrun's world size, a batch size that
        ``--devices`` does not divide, or a ``--device`` naming one GPU for several ranks.
      DeviceError: more devices than this host has (naming what it has); a coordinator that did
        not answer.
      ConfigError: a malformed coordinator address.
    """
    if opts["backend"] == "torch":
        return place_torch(opts)
    return place_jax(opts)


__all__ = [
    "CLI_MODULE",
    "FORCED_ENV",
    "FORCE_FLAG",
    "Placement",
    "exit_process",
    "failure_report",
    "launch_torch",
    "place",
    "reexec_jax",
    "train_argv",
]
