"""Training in JAX: optax Adam, a jitted step, a whole epoch in one compiled call.

Mirrors ``vae_torch.train`` name by name (``make_optimizer``, ``make_train_step``,
``make_run_steps``, ``Trainer`` on the shared ``vae_common.trainer.TrainerBase``), plus the
pure-functional pieces only JAX has (``TrainState``, ``make_train_epoch``...).

The epoch (``make_train_epoch``) is one ``lax.scan`` over the batches of an epoch: the data stay on
the device, batches are gathered by index inside the scan, the noise (and the dynamic
binarization) is drawn from the key inside it, and the train state is donated. There is no host
sync inside an epoch; the per-step losses come back as one array.

``Trainer(devices=N)`` runs the same functions data-parallel: jitted with the batch axis sharded
over a ``"data"`` mesh (``vae_jax.distributed.data_mesh``) and the train state replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vae_common.config import VAEConfig
from vae_common.distributed import state_digest
from vae_common.errors import ConfigError
from vae_common.precision import JAX_MATMUL_PRECISION, check_precision
from vae_common.trainer import TrainerBase
from vae_common.training import EXP_AVG, EXP_AVG_SQ, TrainConfig, beta_at, split_optimizer_state
from vae_jax.convert import from_canonical, to_canonical
from vae_jax.device import check_dtype, select_device, synchronize
from vae_jax.distributed import (
    DATA_AXIS,
    all_ranks_agree,
    data_mesh,
    local_rows,
    process_count,
)
from vae_jax.losses import elbo_terms, negative_iwae_bound, objective
from vae_jax.model import VAE, build_model, decode_mean, encode, with_precision

# train.py names that only this backend has (the mirror test reads it).
JAX_ONLY = ("TrainState", "epoch_key", "init_train_state", "make_indexed_step", "make_train_epoch")


class TrainState(NamedTuple):
    """Parameters, optax state and the number of steps taken (int32 scalar)."""

    params: Any
    opt_state: optax.OptState
    step: jax.Array


def make_optimizer(model: VAE, train: TrainConfig) -> optax.GradientTransformation:
    """``optax.adam`` with the settings of ``train`` (the update rule of ``torch.optim.Adam``).

    An optax transformation holds no parameters; ``model`` is taken for the same call as torch's
    (whose optimizer is bound to the module's parameters).
    """
    del model
    return optax.adam(train.lr, b1=train.b1, b2=train.b2, eps=train.adam_eps)


def init_train_state(model: VAE, params: Any, train: TrainConfig) -> TrainState:
    """Step 0: ``params``, fresh Adam moments, step count 0."""
    return TrainState(params, make_optimizer(model, train).init(params), jnp.zeros((), jnp.int32))


def _update(
    model: VAE,
    train: TrainConfig,
    state: TrainState,
    x: jax.Array,
    eps: jax.Array,
    precision: str = "float32",
) -> tuple[TrainState, jax.Array]:
    optimizer = make_optimizer(model, train)
    beta = beta_at(train, state.step.astype(model.dtype), jnp.minimum)
    # The precision acts while the step is traced: the layers of ``compute`` take its dtype
    # (bf16) and every product its matmul precision; the gradients come back in the parameters'
    # dtype, so Adam and its state are unchanged.
    compute = with_precision(model, precision)
    with jax.default_matmul_precision(JAX_MATMUL_PRECISION[precision]):
        value, grads = jax.value_and_grad(
            lambda p: objective(compute, p, x, eps, beta, train.free_bits)
        )(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), value


def make_train_step(
    model: VAE, train: TrainConfig, precision: str = "float32"
) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``step(state, x, eps) -> (state, loss)``: one Adam step on ``objective`` for the
    batch x (B, C, H, W) with noise eps (B, L), the KL weight of step ``state.step`` (warm-up),
    computed in ``precision`` (``vae_common.precision``: float32, tf32 or bf16; the parameters,
    Adam's state and the float32 loss are the model's either way). The state is donated."""
    return jax.jit(_step_fn(model, train, precision), donate_argnums=0)


def _step_fn(
    model: VAE, train: TrainConfig, precision: str = "float32"
) -> Callable[..., tuple[TrainState, jax.Array]]:
    check_precision(precision, np.dtype(model.dtype).name)
    return lambda state, x, eps: _update(model, train, state, x, eps, precision)


def make_run_steps(
    model: VAE, train: TrainConfig, precision: str = "float32"
) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``run(state, xs, eps) -> (state, losses)``: Adam steps on given batches
    (S, B, ...) and noise (S, B, L) in one ``lax.scan``, the reproducible path ``Trainer.run_steps``
    and the trajectory parity check use; ``precision`` as in ``make_train_step``. The state
    argument is donated."""

    return jax.jit(_run_fn(model, train, precision), donate_argnums=0)


def _run_fn(
    model: VAE, train: TrainConfig, precision: str = "float32"
) -> Callable[..., tuple[TrainState, jax.Array]]:
    check_precision(precision, np.dtype(model.dtype).name)

    def run(state: TrainState, xs: jax.Array, eps: jax.Array) -> tuple[TrainState, jax.Array]:
        return jax.lax.scan(
            lambda s, inp: _update(model, train, s, *inp, precision), state, (xs, eps)
        )

    return run


def _indexed_update(
    model: VAE,
    train: TrainConfig,
    state: TrainState,
    data: jax.Array,
    idx: jax.Array,
    key: Any,
    batch_sharding: NamedSharding | None = None,
    precision: str = "float32",
) -> tuple[TrainState, jax.Array]:
    """One step on ``data[idx]``; noise (and dynamic binarization) drawn from ``key``.

    With ``batch_sharding`` the batch and its noise are constrained to it (rows split over the
    mesh). The noise is still drawn for the whole (B, L) batch from ``key``: JAX's threefry is
    partitionable (``jax_threefry_partitionable``), so each device computes exactly the numbers
    of its rows in the unsharded draw.
    """
    k_bin, k_eps = jax.random.split(key)
    # Gathered as rows of the flattened images with clamped indices: without a fill value for
    # out-of-range indices XLA needs no masking pass (``Trainer.train_epoch`` checks the range).
    rows = jnp.take(data.reshape(data.shape[0], -1), idx, axis=0, mode="clip")
    x = _constrain(rows.reshape(idx.shape + data.shape[1:]), batch_sharding)
    if train.binarize == "dynamic":
        x = _constrain(jax.random.bernoulli(k_bin, x).astype(model.dtype), batch_sharding)
    eps = jax.random.normal(k_eps, (idx.shape[0], model.config.latent_dim), model.dtype)
    return _update(model, train, state, x, _constrain(eps, batch_sharding), precision)


def _constrain(a: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    return a if sharding is None else jax.lax.with_sharding_constraint(a, sharding)


def make_indexed_step(
    model: VAE, train: TrainConfig, precision: str = "float32"
) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``step(state, data, idx, key, i) -> (state, loss)`` on the batch ``data[idx]``
    with the noise of step ``i`` of the epoch keyed by ``key`` (exactly the epoch's step ``i``),
    computed in ``precision`` (as ``make_train_step``).

    The per-step alternative to ``make_train_epoch`` (one dispatch per step); state is donated.
    """
    return jax.jit(_indexed_step_fn(model, train, precision=precision), donate_argnums=0)


def _indexed_step_fn(
    model: VAE,
    train: TrainConfig,
    batch_sharding: NamedSharding | None = None,
    precision: str = "float32",
) -> Callable[..., tuple[TrainState, jax.Array]]:
    check_precision(precision, np.dtype(model.dtype).name)

    def step(
        state: TrainState, data: jax.Array, idx: jax.Array, key: Any, i: Any
    ) -> tuple[TrainState, jax.Array]:
        return _indexed_update(
            model, train, state, data, idx, jax.random.fold_in(key, i), batch_sharding, precision
        )

    return step


def make_train_epoch(
    model: VAE, train: TrainConfig, precision: str = "float32"
) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``epoch(state, data, batches, key) -> (state, losses)``, every step computed in
    ``precision`` (as ``make_train_step``).

    Args (of the returned function):
      state: a ``TrainState`` (donated).
      data: (N, C, H, W) images resident on the device.
      batches: (S, B) int indices into ``data`` (``vae_common.data.batch_indices``).
      key: a JAX key; step i uses ``fold_in(key, i)`` for its noise and binarization.

    Returns:
      the new state and the (S,) per-step losses.
    """
    return jax.jit(_epoch_fn(model, train, precision=precision), donate_argnums=0)


def _epoch_fn(
    model: VAE,
    train: TrainConfig,
    batch_sharding: NamedSharding | None = None,
    precision: str = "float32",
) -> Callable[..., tuple[TrainState, jax.Array]]:
    check_precision(precision, np.dtype(model.dtype).name)

    def epoch(
        state: TrainState, data: jax.Array, batches: jax.Array, key: Any
    ) -> tuple[TrainState, jax.Array]:
        def body(state: TrainState, inputs: Any) -> tuple[TrainState, jax.Array]:
            i, idx = inputs
            return _indexed_update(
                model,
                train,
                state,
                data,
                idx,
                jax.random.fold_in(key, i),
                batch_sharding,
                precision,
            )

        return jax.lax.scan(body, state, (jnp.arange(batches.shape[0]), batches))

    return epoch


def epoch_key(seed: int, epoch: int) -> Any:
    """The key of ``(seed, epoch)``: ``fold_in(key(seed), epoch)``; step i uses
    ``fold_in(epoch_key, i)``, split into (binarization, noise) keys."""
    return jax.random.fold_in(jax.random.key(seed), epoch)


class Trainer(TrainerBase):
    __doc__ = TrainerBase.__doc__

    backend = "jax"

    def __init__(
        self,
        config: VAEConfig,
        train: TrainConfig | None = None,
        dtype: str = "float32",
        device: Any = None,
        compile: bool = False,
        flush_denormal: bool = True,
        devices: int | None = None,
        precision: str = "float32",
    ) -> None:
        super().__init__(config, train, dtype, device, compile, flush_denormal, devices, precision)
        self.model = build_model(config, dtype)
        self.mesh = None if self.devices is None else data_mesh(self.devices, device)
        if self.mesh is None:
            self.device = select_device(device)
        else:
            # Evaluation and generation run unsharded on this process's first device of the mesh.
            self.device = next(
                d for d in self.mesh.devices.flat if d.process_index == jax.process_index()
            )
        check_dtype(self.device, dtype)
        self._processes = process_count()
        if self.mesh is not None and self._processes > 1:
            if not all_ranks_agree(self._settings_text()):
                raise ConfigError(
                    f"process {jax.process_index()}: the processes were started with different "
                    "model, training or dtype settings"
                )
        if self.mesh is None:
            model, train, precision = self.model, self.train_config, self.precision
            self._step_fn = make_train_step(model, train, precision)
            self._run = make_run_steps(model, train, precision)
            self._epoch = make_train_epoch(model, train, precision)
            self._indexed_step = make_indexed_step(model, train, precision)
        else:
            self._jit_data_parallel(self.mesh)
        # Evaluation and generation use ``self.model`` as it is: float32 arithmetic whatever the
        # training precision (``vae_common.precision``).
        self._terms = jax.jit(lambda p, x, e: elbo_terms(self.model, p, x, e))
        self._iwae = jax.jit(lambda p, x, e: negative_iwae_bound(self.model, p, x, e))
        self._decode_mean = jax.jit(lambda p, z: decode_mean(self.model, p, z))
        self._encode = jax.jit(lambda p, x: encode(self.model, p, x))
        self.state: TrainState | None = None

    def _jit_data_parallel(self, mesh: Any) -> None:
        # The same pure functions as the 1-device path, jitted for the mesh: the train state
        # replicated, every batch (and its noise) split along its batch axis. The epoch key
        # travels as its raw uint32 data, which can be placed on several processes' devices.
        model, train, precision = self.model, self.train_config, self.precision
        self._replicated = NamedSharding(mesh, P())
        self._rows = NamedSharding(mesh, P(DATA_AXIS))
        self._step_rows = NamedSharding(mesh, P(None, DATA_AXIS))
        rep, rows, step_rows = self._replicated, self._rows, self._step_rows
        out = (rep, rep)
        self._step_fn = jax.jit(
            _step_fn(model, train, precision),
            in_shardings=(rep, rows, rows),
            out_shardings=out,
            donate_argnums=0,
        )
        self._run = jax.jit(
            _run_fn(model, train, precision),
            in_shardings=(rep, step_rows, step_rows),
            out_shardings=out,
            donate_argnums=0,
        )
        epoch = _epoch_fn(model, train, rows, precision)
        self._epoch = jax.jit(
            lambda st, data, batches, kd: epoch(st, data, batches, jax.random.wrap_key_data(kd)),
            in_shardings=(rep, rep, step_rows, rep),
            out_shardings=out,
            donate_argnums=0,
        )
        step = _indexed_step_fn(model, train, rows, precision)
        self._indexed_step = jax.jit(
            lambda st, data, idx, kd, i: step(st, data, idx, jax.random.wrap_key_data(kd), i),
            in_shardings=(rep, rep, rows, rep, rep),
            out_shardings=out,
            donate_argnums=0,
        )

    @property
    def _state(self) -> TrainState:
        assert self.state is not None  # TrainerBase checks that weights were loaded
        return self.state

    def _put(self, a: Any) -> jax.Array:
        return jax.device_put(jnp.asarray(a, self.model.dtype), self.device)

    def _global(self, a: Any, sharding: NamedSharding, axis: int | None = None) -> jax.Array:
        """``a`` (the same global array in every process) as an array on the mesh: this
        process feeds only its own rows along ``axis`` (all of ``a`` when replicated)."""
        assert self.mesh is not None  # only the data-parallel path places global arrays
        a = np.asarray(a)
        local = a
        if axis is not None:
            local = a[(slice(None),) * axis + (local_rows(a.shape[axis], self.mesh),)]
        return jax.make_array_from_process_local_data(sharding, local, a.shape)

    def _local(self, tree: Any) -> Any:
        """Replicated arrays -> their copy on ``self.device`` (the tree itself on one device)."""
        if self.mesh is None:
            return tree

        def here(a: jax.Array) -> jax.Array:
            return next(s.data for s in a.addressable_shards if s.device == self.device)

        return jax.tree.map(here, tree)

    def _place_state(self, state: TrainState) -> TrainState:
        # Every leaf committed to the device (or replicated over the mesh), so later calls hit
        # the same compiled executable.
        if self.mesh is None:
            return jax.device_put(state, self.device)
        host = jax.tree.map(np.asarray, state)
        return jax.tree.map(lambda a: self._global(a, self._replicated), host)

    def _load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if self.mesh is not None and self._processes > 1:
            if not all_ranks_agree(state_digest(state)):
                raise ConfigError(
                    f"process {jax.process_index()}: the processes were given different weights"
                )
        params = from_canonical(self.model, state)
        self.state = self._place_state(init_train_state(self.model, params, self.train_config))

    def _state_dict(self) -> dict[str, np.ndarray]:
        return to_canonical(self.model, self._local(self._state.params))

    def _step(self) -> int:
        return int(self._local(self._state.step))

    def _optimizer_state_dict(self) -> dict[str, np.ndarray]:
        adam = self._local(self._state.opt_state[0])
        out = {EXP_AVG + k: v for k, v in to_canonical(self.model, adam.mu).items()}
        out.update({EXP_AVG_SQ + k: v for k, v in to_canonical(self.model, adam.nu).items()})
        return out

    def _load_optimizer_state_dict(self, tensors: dict[str, np.ndarray], step: int) -> None:
        mu, nu = split_optimizer_state(tensors, self.config)
        state = self._state
        adam = state.opt_state[0]
        adam = adam._replace(
            count=jnp.asarray(step, jnp.int32),
            mu=from_canonical(self.model, mu),
            nu=from_canonical(self.model, nu),
        )
        self.state = self._place_state(
            TrainState(
                self._local(state.params),
                (adam,) + tuple(state.opt_state[1:]),
                jnp.asarray(step, jnp.int32),
            )
        )

    def _put_data(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return self._put(x)
        # Resident data-parallel training keeps the whole dataset on every device of the mesh
        # (batches are gathered by index there); only the indices are split.
        return self._global(np.asarray(x, self.model.dtype), self._replicated)

    def _train_epoch(
        self, data: jax.Array, batches: np.ndarray, seed: int, epoch: int
    ) -> np.ndarray:
        key = self._put_key(epoch_key(seed, epoch))
        if self.config.arch == "conv" and self.device.platform == "cpu":
            # XLA:CPU runs convolutions inside a lax.scan several times slower than the same
            # step jitted on its own (figures in the README), so conv models loop over a jitted
            # step there; the updates and the noise are the same as the scanned epoch's.
            state, step_losses = self._state, []
            for i, idx in enumerate(batches):
                idx_d, i_d = self._put_step(idx, i)
                state, loss_i = self._indexed_step(state, data, idx_d, key, i_d)
                step_losses.append(self._local(loss_i))
            self.state = state
            return np.asarray(jnp.stack(step_losses))
        if self.mesh is None:
            batches_d = jax.device_put(jnp.asarray(batches, jnp.int32), self.device)
        else:
            batches_d = self._global(batches, self._step_rows, 1)
        self.state, losses = self._epoch(self._state, data, batches_d, key)
        return np.asarray(self._local(losses))

    def _put_key(self, key: Any) -> Any:
        if self.mesh is None:
            return jax.device_put(key, self.device)
        return self._global(np.asarray(jax.random.key_data(key)), self._replicated)

    def _put_step(self, idx: np.ndarray, i: int) -> tuple[Any, Any]:
        if self.mesh is None:
            return idx, np.int32(i)
        return self._global(idx, self._rows, 0), self._global(np.int32(i), self._replicated)

    def _run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        if self.mesh is None:
            self.state, losses = self._run(self._state, self._put(xs), self._put(eps))
        else:
            dtype = self.model.dtype
            self.state, losses = self._run(
                self._state,
                self._global(np.asarray(xs, dtype), self._step_rows, 1),
                self._global(np.asarray(eps, dtype), self._step_rows, 1),
            )
        return np.asarray(self._local(losses))

    def _synchronize(self) -> None:
        synchronize(self.device, self.state)

    def _reconstruct(self, x: np.ndarray) -> np.ndarray:
        params = self._local(self._state.params)
        mean, _ = self._encode(params, self._put(x))
        return np.asarray(self._decode_mean(params, mean))

    def _sample(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self._decode_mean(self._local(self._state.params), self._put(z)))

    def _encode_mean(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._encode(self._local(self._state.params), self._put(x))[0])

    def _batch_terms(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, k = self._terms(self._local(self._state.params), self._put(x), self._put(eps))
        return np.asarray(r, np.float64), np.asarray(k, np.float64)

    def _batch_iwae(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        bound = self._iwae(self._local(self._state.params), self._put(x), self._put(eps))
        return np.asarray(bound, np.float64)


__all__ = [
    "TrainState",
    "Trainer",
    "epoch_key",
    "init_train_state",
    "make_indexed_step",
    "make_optimizer",
    "make_run_steps",
    "make_train_epoch",
    "make_train_step",
]
