"""The JAX ``Trainer`` on the shared contract ``vae_common.trainer.TrainerBase``.

Mirrors ``vae_torch.trainer``. The steps are the pure functions of ``vae_jax.train``, jitted by
``vae_jax.data_parallel.jit_steps``; the train state is a ``TrainState`` value replaced by each
call. ``Trainer(devices=N)`` runs the same functions data-parallel: jitted with the batch axis
sharded over a ``"data"`` mesh (``vae_jax.distributed.data_mesh``) and the train state replicated
(``vae_jax.data_parallel.Placement`` puts every array where its step expects it); a batch the
mesh does not divide, with ``uneven="replicate"``, is replicated and computed whole.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_common.config import VAEConfig
from vae_common.distributed import state_digest
from vae_common.streaming import Prefetcher
from vae_common.trainer import TrainerBase
from vae_common.trainer_checks import cuda_graph_refused
from vae_common.training import EXP_AVG, EXP_AVG_SQ, TrainConfig, split_optimizer_state
from vae_jax.convert import from_canonical, to_canonical
from vae_jax.data_parallel import Placement, Steps, jit_steps, require_same
from vae_jax.device import check_dtype, select_device, synchronize
from vae_jax.distributed import data_mesh, local_rows, process_count
from vae_jax.losses import elbo_terms, negative_iwae_bound
from vae_jax.model import build_model, decode_mean, encode
from vae_jax.train import TrainState, epoch_key, init_train_state


class Trainer(TrainerBase):
    __doc__ = TrainerBase.__doc__

    backend = "jax"

    def __init__(
        self,
        config: VAEConfig,
        train: TrainConfig | None = None,
        dtype: str = "float32",
        device: Any = None,
        compile: bool | str = False,
        flush_denormal: bool = True,
        devices: int | None = None,
        precision: str = "float32",
        uneven: str = "refuse",
    ) -> None:
        super().__init__(
            config, train, dtype, device, compile, flush_denormal, devices, precision, uneven
        )
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
        if self.compile == "cudagraph" and not on_cuda(self.device):
            raise cuda_graph_refused(str(self.device.platform))
        self._processes = process_count()
        if self.mesh is not None and self._processes > 1:
            require_same(
                self._settings_text(),
                "were started with different model, training or dtype settings",
            )
        self._place = Placement(self.mesh, self.device, self.model.dtype)
        self._steps = jit_steps(self.model, self.train_config, self.precision, self.mesh)
        # Batches the mesh does not divide (uneven="replicate"): replicated, computed whole.
        self._whole_place, self._whole_steps = self._place, self._steps
        if self.mesh is not None and self.uneven == "replicate":
            self._whole_place = Placement(self.mesh, self.device, self.model.dtype, whole=True)
            self._whole_steps = jit_steps(
                self.model, self.train_config, self.precision, self.mesh, whole=True
            )
        # Evaluation and generation use ``self.model`` as it is: float32 arithmetic whatever the
        # training precision (``vae_common.precision``).
        self._terms = jax.jit(lambda p, x, e: elbo_terms(self.model, p, x, e))
        self._iwae = jax.jit(lambda p, x, e: negative_iwae_bound(self.model, p, x, e))
        self._decode_mean = jax.jit(lambda p, z: decode_mean(self.model, p, z))
        self._encode = jax.jit(lambda p, x: encode(self.model, p, x))
        self.state: TrainState | None = None

    def _on(self, batch: int) -> tuple[Placement, Steps]:
        """The placement and the steps of a global batch of ``batch`` examples: split over the
        mesh, or replicated and computed whole (``TrainerBase._whole``)."""
        if self._whole(batch):
            return self._whole_place, self._whole_steps
        return self._place, self._steps

    @property
    def _state(self) -> TrainState:
        assert self.state is not None  # TrainerBase checks that weights were loaded
        return self.state

    def _load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if self.mesh is not None and self._processes > 1:
            require_same(state_digest(state), "were given different weights")
        params = from_canonical(self.model, state)
        self.state = self._place.state(init_train_state(self.model, params, self.train_config))

    def _state_dict(self) -> dict[str, np.ndarray]:
        return to_canonical(self.model, self._place.local(self._state.params))

    def _step(self) -> int:
        return int(self._place.local(self._state.step))

    def _optimizer_state_dict(self) -> dict[str, np.ndarray]:
        adam = self._place.local(self._state.opt_state[0])
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
        self.state = self._place.state(
            TrainState(
                self._place.local(state.params),
                (adam,) + tuple(state.opt_state[1:]),
                jnp.asarray(step, jnp.int32),
            )
        )

    def _put_data(self, x: np.ndarray) -> jax.Array:
        return self._place.data(x)

    def _train_epoch(
        self, data: jax.Array, batches: np.ndarray, seed: int, epoch: int
    ) -> np.ndarray:
        key = self._place.key(epoch_key(seed, epoch))
        place, steps = self._on(batches.shape[1])
        if self.config.arch == "conv" and self.device.platform == "cpu":
            # XLA:CPU runs convolutions inside a lax.scan several times slower than the same
            # step jitted on its own (figures in the README), so conv models loop over a jitted
            # step there; the updates and the noise are the same as the scanned epoch's.
            state, step_losses = self._state, []
            for i, idx in enumerate(batches):
                idx_d, i_d = place.step_index(idx, i)
                state, loss_i = steps.indexed_step(state, data, idx_d, key, i_d)
                step_losses.append(place.local(loss_i))
            self.state = state
            return np.asarray(jnp.stack(step_losses))
        self.state, losses = steps.epoch(self._state, data, place.batches(batches), key)
        return np.asarray(place.local(losses))

    def _stream_rows(self, batch: int) -> slice:
        if self.mesh is None or self._whole(batch):
            return slice(0, batch)
        return local_rows(batch, self.mesh)

    def _put_batch(self, x: np.ndarray, batch: int) -> jax.Array:
        return self._on(batch)[0].batch(x)

    def _train_stream(
        self, feed: Prefetcher, batches: np.ndarray, seed: int, epoch: int
    ) -> np.ndarray:
        # One jitted step per batch (a scan cannot take batches as they arrive), the same
        # updates and noise as the resident epoch's step i. Each batch is dropped before the
        # next is asked for (the prefetcher's bound counts it until then).
        key = self._place.key(epoch_key(seed, epoch))
        place, steps = self._on(batches.shape[1])
        state, step_losses, i = self._state, [], 0
        for x in feed:
            state, loss_i = steps.stream(state, x, key, place.number(i))
            del x
            step_losses.append(place.local(loss_i))
            i += 1
        self.state = state
        return np.asarray(jnp.stack(step_losses))

    def _run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        place, steps = self._on(xs.shape[1])
        self.state, losses = steps.run(self._state, place.steps(xs), place.steps(eps))
        return np.asarray(place.local(losses))

    def _synchronize(self) -> None:
        synchronize(self.device, self.state)

    def _reconstruct(self, x: np.ndarray) -> np.ndarray:
        params = self._place.local(self._state.params)
        mean, _ = self._encode(params, self._place.put(x))
        return np.asarray(self._decode_mean(params, mean))

    def _sample(self, z: np.ndarray) -> np.ndarray:
        params = self._place.local(self._state.params)
        return np.asarray(self._decode_mean(params, self._place.put(z)))

    def _encode_mean(self, x: np.ndarray) -> np.ndarray:
        params = self._place.local(self._state.params)
        return np.asarray(self._encode(params, self._place.put(x))[0])

    def _batch_terms(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        put = self._place.put
        r, k = self._terms(self._place.local(self._state.params), put(x), put(eps))
        return np.asarray(r, np.float64), np.asarray(k, np.float64)

    def _batch_iwae(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        put = self._place.put
        bound = self._iwae(self._place.local(self._state.params), put(x), put(eps))
        return np.asarray(bound, np.float64)


def on_cuda(device: Any) -> bool:
    """Whether a JAX device is an NVIDIA GPU under CUDA (not ROCm, not the CPU or a TPU)."""
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return device.platform in ("gpu", "cuda") and "rocm" not in version


__all__ = ["Trainer"]
