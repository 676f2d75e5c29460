"""Where the JAX ``Trainer``'s arrays live and how its steps are jitted: on one device, or on the
``"data"`` mesh of ``Trainer(devices=N)`` (``vae_jax.distributed.data_mesh``).

On a mesh the same pure functions as the 1-device path (``vae_jax.train``) are jitted with the
train state replicated and every batch, with its noise, split along its batch axis; XLA adds the
all-reduces. Each process feeds only its own rows of a global array
(``vae_jax.distributed.local_rows``). A batch the mesh does not divide, under
``Trainer(uneven="replicate")``, is placed replicated instead and its step computed whole on every
device (``whole``). The epoch key travels as its raw uint32 data, which can be placed on several
processes' devices.

Mirrors ``vae_torch.data_parallel`` (``require_same``), plus the placement and the jitted steps
only JAX has (``Placement``, ``Steps``, ``jit_steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae_common.errors import ConfigError
from vae_common.training import TrainConfig
from vae_jax.distributed import DATA_AXIS, all_ranks_agree, local_rows
from vae_jax.model import VAE
from vae_jax.train import (
    TrainState,
    _epoch_fn,
    _indexed_step_fn,
    _run_fn,
    _stream_step_fn,
    make_indexed_step,
    make_run_steps,
    make_train_epoch,
)

# data_parallel.py names that only this backend has (the mirror test reads it).
JAX_ONLY = ("Placement", "Steps", "jit_steps")


def require_same(text: str, what: str) -> None:
    """``ConfigError`` unless every process passed the same ``text`` (one collective);
    ``what`` says how they differ, e.g. ``"were given different weights"``."""
    if not all_ranks_agree(text):
        raise ConfigError(f"process {jax.process_index()}: the processes {what}")


class Steps(NamedTuple):
    """The trainer's jitted steps (each donates its train state):

    run(state, xs, eps), epoch(state, data, batches, key) and indexed_step(state, data, idx,
    key, i), as ``make_run_steps``, ``make_train_epoch`` and ``make_indexed_step``, and
    stream(state, x, key, i) on a streamed batch in its stored dtype; each returns
    ``(state, losses or loss)``.
    """

    run: Callable[..., tuple[TrainState, jax.Array]]
    epoch: Callable[..., tuple[TrainState, jax.Array]]
    indexed_step: Callable[..., tuple[TrainState, jax.Array]]
    stream: Callable[..., tuple[TrainState, jax.Array]]


def jit_steps(
    model: VAE, train: TrainConfig, precision: str, mesh: Mesh | None, whole: bool = False
) -> Steps:
    """The steps of ``vae_jax.train`` jitted for one device (``mesh`` None) or for ``mesh``: the
    state replicated, every batch and its noise split along the batch axis (``whole``: batches
    replicated too, each step computed whole on every device, for a batch the mesh does not
    divide), the keys (raw uint32 data, as ``Placement.key`` places them) and the dataset
    replicated."""
    if mesh is None:
        return Steps(
            make_run_steps(model, train, precision),
            make_train_epoch(model, train, precision),
            make_indexed_step(model, train, precision),
            jax.jit(_stream_step_fn(model, train, precision=precision), donate_argnums=0),
        )
    axes = (None, None, None) if whole else (None, 0, 1)
    rep, rows, step_rows = (NamedSharding(mesh, _spec(axis)) for axis in axes)
    out = (rep, rep)
    epoch = _epoch_fn(model, train, rows, precision)
    step = _indexed_step_fn(model, train, rows, precision)
    stream = _stream_step_fn(model, train, rows, precision)
    return Steps(
        jax.jit(
            _run_fn(model, train, precision),
            in_shardings=(rep, step_rows, step_rows),
            out_shardings=out,
            donate_argnums=0,
        ),
        jax.jit(
            lambda st, data, batches, kd: epoch(st, data, batches, jax.random.wrap_key_data(kd)),
            in_shardings=(rep, rep, step_rows, rep),
            out_shardings=out,
            donate_argnums=0,
        ),
        jax.jit(
            lambda st, data, idx, kd, i: step(st, data, idx, jax.random.wrap_key_data(kd), i),
            in_shardings=(rep, rep, rows, rep, rep),
            out_shardings=out,
            donate_argnums=0,
        ),
        jax.jit(
            lambda st, x, kd, i: stream(st, x, jax.random.wrap_key_data(kd), i),
            in_shardings=(rep, rows, rep, rep),
            out_shardings=out,
            donate_argnums=0,
        ),
    )


def _spec(axis: int | None) -> P:
    """Replicated (None), or split over the mesh along ``axis``."""
    return P() if axis is None else P(*([None] * axis), DATA_AXIS)


class Placement:
    """Arrays to and from the trainer's devices: committed to ``device`` (``mesh`` None), or
    global arrays on ``mesh`` whose evaluation copy lives on ``device`` (this process's first
    device of the mesh). Floating-point inputs are cast to ``dtype`` on the host first. With
    ``whole`` the batches (and their indices and noise) are replicated over the mesh instead of
    split: the placement of ``jit_steps(..., whole=True)``."""

    def __init__(self, mesh: Mesh | None, device: Any, dtype: Any, whole: bool = False) -> None:
        self.mesh = mesh
        self.device = device
        self.dtype = dtype
        self.whole = whole

    def _batch_axis(self, axis: int) -> int | None:
        """The axis a batch splits along: ``axis``, or None (replicated) with ``whole``."""
        return None if self.whole else axis

    def put(self, a: Any) -> jax.Array:
        """``a`` in the model dtype on ``device`` alone (evaluation and generation)."""
        return jax.device_put(jnp.asarray(a, self.dtype), self.device)

    def split(self, a: Any, axis: int | None = None) -> jax.Array:
        """``a`` (the same global array in every process) as an array on the mesh: split along
        ``axis`` (None: replicated); this process feeds only its own rows along ``axis``."""
        assert self.mesh is not None  # only the data-parallel path places global arrays
        a = np.asarray(a)
        local = a
        if axis is not None:
            local = a[(slice(None),) * axis + (local_rows(a.shape[axis], self.mesh),)]
        return jax.make_array_from_process_local_data(
            NamedSharding(self.mesh, _spec(axis)), local, a.shape
        )

    def local(self, tree: Any) -> Any:
        """Replicated arrays -> their copy on ``device`` (the tree itself on one device)."""
        if self.mesh is None:
            return tree

        def here(a: jax.Array) -> jax.Array:
            return next(s.data for s in a.addressable_shards if s.device == self.device)

        return jax.tree.map(here, tree)

    def state(self, state: TrainState) -> TrainState:
        """Every leaf committed to the device (or replicated over the mesh), so later calls hit
        the same compiled executable."""
        if self.mesh is None:
            return jax.device_put(state, self.device)
        host = jax.tree.map(np.asarray, state)
        return jax.tree.map(self.split, host)

    def data(self, x: np.ndarray) -> jax.Array:
        """The resident dataset: on the device, or whole on every device of the mesh (batches
        are gathered by index there; only the indices are split)."""
        if self.mesh is None:
            return self.put(x)
        return self.split(np.asarray(x, self.dtype))

    def key(self, key: Any) -> Any:
        """An epoch key as the jitted steps take it (raw uint32 data on a mesh)."""
        if self.mesh is None:
            return jax.device_put(key, self.device)
        return self.split(np.asarray(jax.random.key_data(key)))

    def batches(self, batches: np.ndarray) -> jax.Array:
        """(S, B) int32 indices of an epoch, each step's row split over the mesh."""
        if self.mesh is None:
            return jax.device_put(jnp.asarray(batches, jnp.int32), self.device)
        return self.split(batches, self._batch_axis(1))

    def step_index(self, idx: np.ndarray, i: int) -> tuple[Any, Any]:
        """One step's (B,) indices and its number ``i`` as ``Steps.indexed_step`` takes them."""
        return (idx if self.mesh is None else self.split(idx, self._batch_axis(0))), self.number(i)

    def number(self, i: int) -> Any:
        """A step number as the per-step functions take it (replicated on a mesh)."""
        return np.int32(i) if self.mesh is None else self.split(np.int32(i))

    def batch(self, x: np.ndarray) -> jax.Array:
        """This process's rows x of a streamed batch, in their stored dtype: on the device, or
        the global batch on the mesh (each device its slice: ``local_rows``; ``whole``: x is
        the whole batch, replicated). Sent as rows (B, C*H*W), the layout of the resident
        epoch's gathered rows: given (B, C, H, W), XLA keeps the step's per-pixel sums in that
        shape and adds the pixels in another order than the scanned epoch does (a float64 loss
        one ulp apart, seen on a statically binarized run)."""
        x = x.reshape(len(x), -1)
        if self.mesh is None:
            return jax.device_put(x, self.device)
        if self.whole:
            return self.split(x)
        own = sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)
        shape = (len(x) * self.mesh.devices.size // own,) + x.shape[1:]
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, _spec(0)), x, shape)

    def steps(self, a: np.ndarray) -> jax.Array:
        """(S, B, ...) per-step batches or noise in the model dtype, each step split."""
        if self.mesh is None:
            return self.put(a)
        return self.split(np.asarray(a, self.dtype), self._batch_axis(1))


__all__ = ["Placement", "Steps", "jit_steps", "require_same"]
