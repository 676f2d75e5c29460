"""Training in JAX: optax Adam, a jitted step, a whole epoch in one compiled call.

The pure functions of training: mirrors ``vae_torch.train`` name by name (``make_optimizer``,
``make_train_step``, ``make_run_steps``), plus the pure-functional pieces only JAX has
(``TrainState``, ``make_train_epoch``...). The stateful ``Trainer`` on the shared
``vae_common.trainer.TrainerBase`` lives in ``vae_jax.trainer`` (importable from here too).

The epoch (``make_train_epoch``) is one ``lax.scan`` over the batches of an epoch: the data stay on
the device, batches are gathered by index inside the scan, the noise (and the dynamic
binarization) is drawn from the key inside it, and the train state is donated. There is no host
sync inside an epoch; the per-step losses come back as one array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from vae_common.precision import JAX_MATMUL_PRECISION, check_precision
from vae_common.streaming import UINT8_VALUES
from vae_common.training import TrainConfig, beta_at
from vae_jax.losses import objective
from vae_jax.model import VAE, with_precision

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
    """One step on ``data[idx]``; noise (and dynamic binarization) drawn from ``key``."""
    # Gathered as rows of the flattened images with clamped indices: without a fill value for
    # out-of-range indices XLA needs no masking pass (``Trainer.train_epoch`` checks the range).
    rows = jnp.take(data.reshape(data.shape[0], -1), idx, axis=0, mode="clip")
    x = rows.reshape(idx.shape + data.shape[1:])
    return _batch_update(model, train, state, x, key, batch_sharding, precision)


def _batch_update(
    model: VAE,
    train: TrainConfig,
    state: TrainState,
    x: jax.Array,
    key: Any,
    batch_sharding: NamedSharding | None = None,
    precision: str = "float32",
) -> tuple[TrainState, jax.Array]:
    """One step on the batch x (B, C, H, W); noise (and dynamic binarization) drawn from ``key``.

    With ``batch_sharding`` the batch and its noise are constrained to it (rows split over the
    mesh). The noise is still drawn for the whole (B, L) batch from ``key``: JAX's threefry is
    partitionable (``jax_threefry_partitionable``), so each device computes exactly the numbers
    of its rows in the unsharded draw.
    """
    k_bin, k_eps = jax.random.split(key)
    x = _constrain(x, batch_sharding)
    if train.binarize == "dynamic":
        x = _constrain(jax.random.bernoulli(k_bin, x).astype(model.dtype), batch_sharding)
    eps = jax.random.normal(k_eps, (x.shape[0], model.config.latent_dim), model.dtype)
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


def _stream_step_fn(
    model: VAE,
    train: TrainConfig,
    batch_sharding: NamedSharding | None = None,
    precision: str = "float32",
) -> Callable[..., tuple[TrainState, jax.Array]]:
    """``step(state, x, key, i) -> (state, loss)`` on a streamed batch x (B, C, H, W) in its
    stored dtype (``vae_common.streaming``): uint8 pixels become ``UINT8_VALUES`` (the data
    loaders' float32 k / 255), floats are cast to the model dtype; then step ``i`` of the epoch
    keyed by ``key``, exactly as ``make_indexed_step`` on the same values."""
    check_precision(precision, np.dtype(model.dtype).name)

    def step(state: TrainState, x: jax.Array, key: Any, i: Any) -> tuple[TrainState, jax.Array]:
        if x.dtype == jnp.uint8:
            x = jnp.asarray(UINT8_VALUES, model.dtype)[x]
        # Images given as rows (B, C*H*W) are shaped as the resident epoch shapes its gathered
        # rows, so that XLA compiles both alike (see ``Placement.batch``).
        x = x.astype(model.dtype).reshape((x.shape[0],) + model.config.input_shape)
        key_i = jax.random.fold_in(key, i)
        return _batch_update(model, train, state, x, key_i, batch_sharding, precision)

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


# ``Trainer`` is built on the functions above; imported last so that ``from vae_jax.train import
# Trainer`` keeps working (``vae_jax/__init__.py`` imports this module first).
from vae_jax.trainer import Trainer  # noqa: E402

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
