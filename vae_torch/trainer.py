"""The torch ``Trainer`` on the shared contract ``vae_common.trainer.TrainerBase``: data resident
on the device, no host sync per step (losses are collected on the device and read once per epoch).

Mirrors ``vae_jax.trainer``. The steps are ``vae_torch.train``'s (eager, or compiled by
``vae_torch._compile``, or the eager step replayed as a CUDA graph by ``vae_torch._cuda_graph``
for ``compile="cudagraph"``). ``Trainer(devices=N)`` is one rank of N processes under
``DistributedDataParallel`` (``vae_torch.data_parallel``): each rank steps on its rows of the
global batch, with the noise of those rows drawn for the whole batch, and DDP averages the
gradients. A batch the ranks do not divide, with ``uneven="replicate"``, is every rank's whole:
the average is then of identical gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from vae_common.config import VAEConfig
from vae_common.distributed import state_digest
from vae_common.errors import DeviceError
from vae_common.streaming import UINT8_VALUES, Prefetcher
from vae_common.trainer import TrainerBase
from vae_common.training import (
    TrainConfig,
    beta_at,
    epoch_seed,
)
from vae_torch._compile import make_compiled_step, require_compiler
from vae_torch._cuda_graph import GraphedStep, graph_api, mark_capturable
from vae_torch.convert import (
    adam_state_from_canonical,
    adam_state_to_canonical,
    from_canonical,
    to_canonical,
)
from vae_torch.data_parallel import (
    global_mean,
    process_device,
    process_group,
    rank_rows,
    require_same,
)
from vae_torch.device import check_dtype, synchronize
from vae_torch.losses import elbo_terms, negative_iwae_bound
from vae_torch.model import build_model, decode_mean, encode
from vae_torch.train import (
    _ddp_step,
    autocast,
    make_optimizer,
    make_train_step,
    matmul_precision,
)


class Trainer(TrainerBase):
    __doc__ = TrainerBase.__doc__

    backend = "torch"
    # The CUDA-graph API of ``compile="cudagraph"``: None for ``torch.cuda`` (CUDA devices
    # only). A subclass may set a stand-in with the same names (``CUDAGraph``, ``graph``,
    # ``Stream``, ``stream``, ``current_stream``), which then runs on any device: the tests
    # replay the captured step on the CPU that way.
    _graph_api: ClassVar[Any] = None

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
        self.world, self.rank = process_group(
            self.devices, self.train_config, self._settings_text()
        )
        self.device = process_device(device, self.world)
        check_dtype(self.device, dtype)
        if self.precision == "bf16" and not torch.amp.is_autocast_available(self.device.type):
            raise DeviceError(
                f"precision 'bf16' needs torch.autocast on {self.device.type}, which this torch "
                "build does not offer there; use precision 'float32'"
            )
        # Adam's moments of rarely-updated weights decay into denormals, which slow x86 CPUs
        # (see PITFALLS); the switch is process-wide, so it is on only while this trainer trains.
        self.flush_denormal = self.flush_denormal and self.device.type == "cpu"
        self.model = build_model(config, dtype).to(self.device)
        # uint8 pixel k -> the model dtype's k / 255 (streamed batches), on the device.
        dtype_t = next(self.model.parameters()).dtype
        self._uint8_values = torch.as_tensor(UINT8_VALUES).to(self.device, dtype_t)
        self._graphs = graph_api(self.compile, self.devices, self.device, self._graph_api)
        self.optimizer = self._new_optimizer()
        if self.compile is True:
            require_compiler({self.device.type})
        self._eager_step = make_train_step(self.model, self.train_config, self.precision)
        self._compiled_step: Callable[..., torch.Tensor] | None = None
        self._step_count = 0
        if self.world > 1 and self.compile is False:
            # The compiled step all-reduces its own gradients (torch.func bypasses DDP's
            # hooks), so only the eager step goes through DDP.
            self._eager_step = _ddp_step(self.model, self.train_config, self.precision, self.device)

    def _new_optimizer(self) -> torch.optim.Adam:
        """A fresh ``make_optimizer``, marked capturable for CUDA graphs."""
        optimizer = make_optimizer(self.model, self.train_config)
        return mark_capturable(optimizer) if self._graphs is not None else optimizer

    def _put(self, a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), device=self.device).to(
            next(self.model.parameters()).dtype
        )

    def _train_step(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self._graphs is not None:
            if self._compiled_step is None:
                self._compiled_step = GraphedStep(
                    self.model, self.optimizer, self.train_config, self.precision, self._graphs
                )
            value = self._compiled_step(x, eps, beta_at(self.train_config, self._step_count))
        elif self.compile:
            if self._compiled_step is None:
                self._compiled_step = make_compiled_step(
                    self.model,
                    self.optimizer,
                    self.train_config.free_bits,
                    data_parallel=self.world > 1,
                )
            # The compiled graph is traced under the ambient autocast and TF32 state (a change
            # of either recompiles it), so the precision applies inside it.
            kind = self.device.type
            with matmul_precision(kind, self.precision), autocast(kind, self.precision):
                value = self._compiled_step(x, eps, beta_at(self.train_config, self._step_count))
        else:
            value = self._eager_step(self.optimizer, x, eps, self._step_count)
        self._step_count += 1
        return value

    @contextlib.contextmanager
    def _denormals_flushed(self) -> Iterator[None]:
        if not self.flush_denormal:
            yield
            return
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)

    def _load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if self.world > 1:
            require_same(state_digest(state), "were given different weights")
        from_canonical(self.model, state)
        self.optimizer = self._new_optimizer()
        # Bound to the optimizer it was made with (a CUDA graph: to its very state tensors).
        self._compiled_step = None
        self._step_count = 0

    def _state_dict(self) -> dict[str, np.ndarray]:
        return to_canonical(self.model, None)

    def _step(self) -> int:
        return self._step_count

    def _optimizer_state_dict(self) -> dict[str, np.ndarray]:
        return adam_state_to_canonical(self.model, self.optimizer)

    def _load_optimizer_state_dict(self, tensors: dict[str, np.ndarray], step: int) -> None:
        adam_state_from_canonical(self.model, self.optimizer, tensors, step)
        self._step_count = step
        if self._graphs is not None:
            self._compiled_step = None  # its graphs update the state tensors just replaced

    def _put_data(self, x: np.ndarray) -> torch.Tensor:
        return self._put(x)

    def _train_epoch(
        self, data: torch.Tensor, batches: np.ndarray, seed: int, epoch: int
    ) -> np.ndarray:
        index = torch.as_tensor(batches.astype(np.int64), device=self.device)
        rows = self._stream_rows(len(batches[0]))
        return self._steps_on(
            batches.shape, seed, epoch, lambda i: data.index_select(0, index[i, rows])
        )

    def _rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of ``batch``: its slice, or all of them for a
        batch the ranks do not divide (``uneven="replicate"``: every rank computes it whole)."""
        if self._whole(batch):
            return slice(0, batch)
        return rank_rows(batch, self.world, self.rank)

    def _stream_rows(self, batch: int) -> slice:
        # The dynamic binarization is drawn for the whole global batch (``_steps_on``), so every
        # rank then needs all of it.
        if self.train_config.binarize == "dynamic":
            return slice(0, batch)
        return self._rows(batch)

    def _put_batch(self, x: np.ndarray, batch: int) -> torch.Tensor:
        t = torch.from_numpy(x)
        if self.device.type == "cuda":
            # Pinned, so the copy is queued without waiting; on the steps' stream, so it runs
            # in order with them.
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _train_stream(
        self, feed: Prefetcher, batches: np.ndarray, seed: int, epoch: int
    ) -> np.ndarray:
        batch_iter = iter(feed)
        return self._steps_on(batches.shape, seed, epoch, lambda i: self._floats(next(batch_iter)))

    def _floats(self, x: torch.Tensor) -> torch.Tensor:
        """A streamed batch in the model dtype: uint8 pixels through ``UINT8_VALUES`` (the data
        loaders' float32 k / 255), floats cast."""
        if x.dtype == torch.uint8:
            return self._uint8_values[x.long()]
        return x.to(self._uint8_values.dtype)

    def _steps_on(
        self,
        shape: tuple[int, ...],
        seed: int,
        epoch: int,
        batch_at: Callable[[int], torch.Tensor],
    ) -> np.ndarray:
        """The epoch's ``shape`` = (S, B) steps, step i on ``batch_at(i)``: this rank's rows
        (``_stream_rows``) of the global batch i in the model dtype, on the device."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(seed, epoch))
        steps, batch = shape
        rows = self._rows(batch)
        dtype = self._uint8_values.dtype
        losses = torch.empty(steps, device=self.device, dtype=dtype)
        dynamic = self.train_config.binarize == "dynamic"
        with self._denormals_flushed():
            for i in range(steps):
                # The random draws are made for the whole global batch, as in the 1-device
                # run, and sliced: example j gets the same binarization and noise on any rank.
                x = batch_at(i)
                if dynamic:
                    x = torch.bernoulli(x, generator=gen)[rows]
                eps = torch.randn(
                    (batch, self.config.latent_dim), generator=gen, device=self.device, dtype=dtype
                )
                losses[i] = self._train_step(x, eps[rows])
                del x
            return global_mean(losses, self.world).cpu().numpy()

    def _run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        rows = self._rows(xs.shape[1])
        xs_t, eps_t = self._put(xs[:, rows]), self._put(eps[:, rows])
        with self._denormals_flushed():
            losses = torch.stack([self._train_step(xs_t[i], eps_t[i]) for i in range(len(xs))])
            return global_mean(losses, self.world).cpu().numpy()

    def _synchronize(self) -> None:
        synchronize(self.device)

    @torch.no_grad()
    def _reconstruct(self, x: np.ndarray) -> np.ndarray:
        mean, _ = encode(self.model, None, self._put(x))
        return decode_mean(self.model, None, mean).cpu().numpy()

    @torch.no_grad()
    def _sample(self, z: np.ndarray) -> np.ndarray:
        return decode_mean(self.model, None, self._put(z)).cpu().numpy()

    @torch.no_grad()
    def _encode_mean(self, x: np.ndarray) -> np.ndarray:
        return encode(self.model, None, self._put(x))[0].cpu().numpy()

    @torch.no_grad()
    def _batch_terms(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, k = elbo_terms(self.model, None, self._put(x), self._put(eps))
        return r.double().cpu().numpy(), k.double().cpu().numpy()

    @torch.no_grad()
    def _batch_iwae(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        bound = negative_iwae_bound(self.model, None, self._put(x), self._put(eps))
        return bound.double().cpu().numpy()


def on_cuda(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA device (where ``compile="cudagraph"`` runs)."""
    return device.type == "cuda"


__all__ = ["Trainer"]
