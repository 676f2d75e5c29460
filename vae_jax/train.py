"""Training in JAX: optax Adam, a jitted step, a whole epoch in one compiled call.

Mirrors ``vae_torch.train`` name by name (``make_optimizer``, ``make_train_step``,
``make_run_steps``, ``Trainer`` on the shared ``vae_common.trainer.TrainerBase``), plus the
pure-functional pieces only JAX has (``TrainState``, ``make_train_epoch``...).

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

from vae_common.config import VAEConfig
from vae_common.trainer import TrainerBase
from vae_common.training import EXP_AVG, EXP_AVG_SQ, TrainConfig, beta_at, split_optimizer_state
from vae_jax.convert import from_canonical, to_canonical
from vae_jax.device import check_dtype, select_device, synchronize
from vae_jax.losses import elbo_terms, negative_iwae_bound, objective
from vae_jax.model import VAE, build_model, decode_mean, encode

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
    model: VAE, train: TrainConfig, state: TrainState, x: jax.Array, eps: jax.Array
) -> tuple[TrainState, jax.Array]:
    optimizer = make_optimizer(model, train)
    beta = beta_at(train, state.step.astype(model.dtype), jnp.minimum)
    value, grads = jax.value_and_grad(lambda p: objective(model, p, x, eps, beta, train.free_bits))(
        state.params
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), value


def make_train_step(model: VAE, train: TrainConfig) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``step(state, x, eps) -> (state, loss)``: one Adam step on ``objective`` for the
    batch x (B, C, H, W) with noise eps (B, L), the KL weight of step ``state.step`` (warm-up).
    The state argument is donated."""
    return jax.jit(lambda state, x, eps: _update(model, train, state, x, eps), donate_argnums=0)


def make_run_steps(model: VAE, train: TrainConfig) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``run(state, xs, eps) -> (state, losses)``: Adam steps on given batches
    (S, B, ...) and noise (S, B, L) in one ``lax.scan``, the reproducible path ``Trainer.run_steps``
    and the trajectory parity check use. The state argument is donated."""

    def run(state: TrainState, xs: jax.Array, eps: jax.Array) -> tuple[TrainState, jax.Array]:
        return jax.lax.scan(lambda s, inp: _update(model, train, s, *inp), state, (xs, eps))

    return jax.jit(run, donate_argnums=0)


def _indexed_update(
    model: VAE, train: TrainConfig, state: TrainState, data: jax.Array, idx: jax.Array, key: Any
) -> tuple[TrainState, jax.Array]:
    """One step on ``data[idx]``; noise (and dynamic binarization) drawn from ``key``."""
    k_bin, k_eps = jax.random.split(key)
    # Gathered as rows of the flattened images with clamped indices: without a fill value for
    # out-of-range indices XLA needs no masking pass (``Trainer.train_epoch`` checks the range).
    rows = jnp.take(data.reshape(data.shape[0], -1), idx, axis=0, mode="clip")
    x = rows.reshape(idx.shape + data.shape[1:])
    if train.binarize == "dynamic":
        x = jax.random.bernoulli(k_bin, x).astype(model.dtype)
    eps = jax.random.normal(k_eps, (idx.shape[0], model.config.latent_dim), model.dtype)
    return _update(model, train, state, x, eps)


def make_indexed_step(
    model: VAE, train: TrainConfig
) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``step(state, data, idx, key, i) -> (state, loss)`` on the batch ``data[idx]``
    with the noise of step ``i`` of the epoch keyed by ``key`` (exactly the epoch's step ``i``).

    The per-step alternative to ``make_train_epoch`` (one dispatch per step); state is donated.
    """

    def step(
        state: TrainState, data: jax.Array, idx: jax.Array, key: Any, i: Any
    ) -> tuple[TrainState, jax.Array]:
        return _indexed_update(model, train, state, data, idx, jax.random.fold_in(key, i))

    return jax.jit(step, donate_argnums=0)


def make_train_epoch(model: VAE, train: TrainConfig) -> Callable[..., tuple[TrainState, jax.Array]]:
    """A jitted ``epoch(state, data, batches, key) -> (state, losses)``.

    Args (of the returned function):
      state: a ``TrainState`` (donated).
      data: (N, C, H, W) images resident on the device.
      batches: (S, B) int indices into ``data`` (``vae_common.data.batch_indices``).
      key: a JAX key; step i uses ``fold_in(key, i)`` for its noise and binarization.

    Returns:
      the new state and the (S,) per-step losses.
    """

    def epoch(
        state: TrainState, data: jax.Array, batches: jax.Array, key: Any
    ) -> tuple[TrainState, jax.Array]:
        def body(state: TrainState, inputs: Any) -> tuple[TrainState, jax.Array]:
            i, idx = inputs
            return _indexed_update(model, train, state, data, idx, jax.random.fold_in(key, i))

        return jax.lax.scan(body, state, (jnp.arange(batches.shape[0]), batches))

    return jax.jit(epoch, donate_argnums=0)


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
    ) -> None:
        super().__init__(config, train, dtype, device, compile, flush_denormal)
        self.device = select_device(device)
        check_dtype(self.device, dtype)
        self.model = build_model(config, dtype)
        self._step_fn = make_train_step(self.model, self.train_config)
        self._run = make_run_steps(self.model, self.train_config)
        self._epoch = make_train_epoch(self.model, self.train_config)
        self._indexed_step = make_indexed_step(self.model, self.train_config)
        self._terms = jax.jit(lambda p, x, e: elbo_terms(self.model, p, x, e))
        self._iwae = jax.jit(lambda p, x, e: negative_iwae_bound(self.model, p, x, e))
        self._decode_mean = jax.jit(lambda p, z: decode_mean(self.model, p, z))
        self._encode = jax.jit(lambda p, x: encode(self.model, p, x))
        self.state: TrainState | None = None

    @property
    def _state(self) -> TrainState:
        assert self.state is not None  # TrainerBase checks that weights were loaded
        return self.state

    def _put(self, a: Any) -> jax.Array:
        return jax.device_put(jnp.asarray(a, self.model.dtype), self.device)

    def _load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        # Every leaf committed to the device, so later calls hit the same compiled executable.
        params = from_canonical(self.model, state)
        self.state = jax.device_put(
            init_train_state(self.model, params, self.train_config), self.device
        )

    def _state_dict(self) -> dict[str, np.ndarray]:
        return to_canonical(self.model, self._state.params)

    def _step(self) -> int:
        return int(self._state.step)

    def _optimizer_state_dict(self) -> dict[str, np.ndarray]:
        adam = self._state.opt_state[0]
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
        self.state = jax.device_put(
            TrainState(
                state.params, (adam,) + tuple(state.opt_state[1:]), jnp.asarray(step, jnp.int32)
            ),
            self.device,
        )

    def _put_data(self, x: np.ndarray) -> jax.Array:
        return self._put(x)

    def _train_epoch(
        self, data: jax.Array, batches: np.ndarray, seed: int, epoch: int
    ) -> np.ndarray:
        key = jax.device_put(epoch_key(seed, epoch), self.device)
        if self.config.arch == "conv" and self.device.platform == "cpu":
            # XLA:CPU runs convolutions inside a lax.scan several times slower than the same
            # step jitted on its own (figures in the README), so conv models loop over a jitted
            # step there; the updates and the noise are the same as the scanned epoch's.
            state, step_losses = self._state, []
            for i, idx in enumerate(batches):
                state, loss_i = self._indexed_step(state, data, idx, key, np.int32(i))
                step_losses.append(loss_i)
            self.state = state
            return np.asarray(jnp.stack(step_losses))
        batches_d = jax.device_put(jnp.asarray(batches, jnp.int32), self.device)
        self.state, losses = self._epoch(self._state, data, batches_d, key)
        return np.asarray(losses)

    def _run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        self.state, losses = self._run(self._state, self._put(xs), self._put(eps))
        return np.asarray(losses)

    def _synchronize(self) -> None:
        synchronize(self.device, self.state)

    def _reconstruct(self, x: np.ndarray) -> np.ndarray:
        mean, _ = self._encode(self._state.params, self._put(x))
        return np.asarray(self._decode_mean(self._state.params, mean))

    def _sample(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self._decode_mean(self._state.params, self._put(z)))

    def _encode_mean(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._encode(self._state.params, self._put(x))[0])

    def _batch_terms(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, k = self._terms(self._state.params, self._put(x), self._put(eps))
        return np.asarray(r, np.float64), np.asarray(k, np.float64)

    def _batch_iwae(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        bound = self._iwae(self._state.params, self._put(x), self._put(eps))
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
