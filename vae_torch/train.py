"""Training in PyTorch: ``torch.optim.Adam``, data resident on the device, no host sync per step
(losses are collected on the device and read once per epoch).

Mirrors ``vae_jax.train`` name by name: the same objective (``vae_torch.losses.objective``), the
same Adam update (``lr * m_hat / (sqrt(v_hat) + adam_eps)``, bias-corrected), the same batches
(``vae_common.data.batch_indices``) and a ``Trainer`` on the shared contract
(``vae_common.trainer.TrainerBase``). The compiled step lives in ``vae_torch._compile``.

``Trainer(devices=N)`` is one rank of N processes (``vae_torch.distributed``) under
``DistributedDataParallel``: each rank steps on its rows of the global batch, with the noise of
those rows drawn for the whole batch, and DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vae_common.config import VAEConfig
from vae_common.distributed import state_digest
from vae_common.errors import ConfigError, DeviceError
from vae_common.precision import check_precision, tf32_applies
from vae_common.trainer import TrainerBase
from vae_common.training import (
    EXP_AVG,
    EXP_AVG_SQ,
    TrainConfig,
    beta_at,
    epoch_seed,
    split_optimizer_state,
)
from vae_torch._compile import cpu_compiler, make_compiled_step, require_compiler
from vae_torch.convert import from_canonical, to_canonical
from vae_torch.device import check_dtype, select_device, synchronize
from vae_torch.distributed import all_ranks_agree, local_device
from vae_torch.losses import elbo_terms, negative_iwae_bound, objective
from vae_torch.model import VAE, build_model, decode_mean, encode

# train.py names that only this backend has (the mirror test reads it): the compiled step and
# the contexts that apply a training precision (JAX traces it into the step instead).
TORCH_ONLY = (
    "autocast",
    "cpu_compiler",
    "make_compiled_step",
    "matmul_precision",
    "require_compiler",
)

StepFn = Callable[[torch.optim.Optimizer, torch.Tensor, torch.Tensor, int], torch.Tensor]


def make_optimizer(model: VAE, train: TrainConfig) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``model``'s parameters with the settings of ``train`` (optax's
    update rule), the fused kernel where this torch build has one for the device."""
    return _adam(model, train, fused=None)


def _adam(model: VAE, train: TrainConfig, fused: bool | None) -> torch.optim.Adam:
    """``fused=None``: fused where available; True: fused or raise; False: torch's default."""
    kwargs: dict[str, Any] = dict(lr=train.lr, betas=(train.b1, train.b2), eps=train.adam_eps)
    if fused is None or fused:
        try:
            return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, ValueError):
            if fused:
                raise
    return torch.optim.Adam(model.parameters(), **kwargs)


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's context for a training ``precision`` (``vae_common.precision``):
    ``torch.autocast(device_type, dtype=torch.bfloat16)`` for ``"bf16"`` on the device type the
    batch lives on (``"cpu"``, ``"cuda"``, ``"xpu"``), nothing for the others.

    The autocast cache is off: each weight is cast once per step anyway, and CUDA-graph capture
    needs it off (a cached cast made during capture would outlive its graph's memory pool).
    """
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)


class _TF32:
    """TF32 products (cuBLAS matmuls and cuDNN convolutions) on or off while inside; the
    process-wide switches are restored on exit."""

    def __init__(self, allow: bool) -> None:
        self.allow = allow
        self.saved: tuple[bool, bool] | None = None

    def __enter__(self) -> None:
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = self.allow
        torch.backends.cudnn.allow_tf32 = self.allow

    def __exit__(self, *exc: object) -> None:
        assert self.saved is not None
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def matmul_precision(device_type: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The context of a whole step (forward and backward) for ``precision``: on CUDA, TF32 on
    for ``"tf32"`` and off for the others (torch's own default lets cuDNN convolutions use it),
    so float32 means float32 products; nothing on other devices, which have no TF32 mode."""
    if device_type != "cuda":
        return contextlib.nullcontext()
    return _TF32(tf32_applies(precision, device_type))


def make_train_step(model: VAE, train: TrainConfig, precision: str = "float32") -> StepFn:
    """An eager ``step(optimizer, x, eps, index) -> loss`` on ``objective``: one Adam step of
    ``optimizer`` (from ``make_optimizer(model, train)``) on the batch x (B, C, H, W) with noise
    eps (B, L), the KL weight of 0-based step ``index`` (warm-up). The loss is a 0-d device
    tensor (no host sync). ``vae_torch.make_compiled_step`` is the compiled equivalent.

    ``precision`` (``vae_common.precision``): ``"bf16"`` runs the forward pass under
    ``autocast`` on x's device type (the backward follows its casts), ``"tf32"`` allows TF32
    products on CUDA; the parameters, gradients, Adam's state and the loss stay float32."""
    check_precision(precision, _dtype_name(model))

    def step(
        optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor, index: int
    ) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        kind = x.device.type
        with matmul_precision(kind, precision):
            with autocast(kind, precision):
                # x's values are not checked per step (it would sync the device): the trainer
                # checks its data once.
                value = objective(
                    model, None, x, eps, beta_at(train, index), train.free_bits, check_values=False
                )
            value.backward()
        optimizer.step()
        return value.detach()

    return step


def _dtype_name(model: VAE) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def make_run_steps(
    model: VAE, train: TrainConfig, precision: str = "float32"
) -> Callable[[torch.optim.Optimizer, torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """``run(optimizer, xs, eps, first) -> losses``: Adam steps on given batches (S, B, ...)
    and noise (S, B, L), numbered from ``first``, computed in ``precision`` (as
    ``make_train_step``); the (S,) losses stay on the device."""
    step = make_train_step(model, train, precision)

    def run(
        optimizer: torch.optim.Optimizer, xs: torch.Tensor, eps: torch.Tensor, first: int
    ) -> torch.Tensor:
        return torch.stack([step(optimizer, xs[i], eps[i], first + i) for i in range(len(xs))])

    return run


class _Objective(torch.nn.Module):
    """``objective`` as a module's forward, the form ``DistributedDataParallel`` wraps: DDP
    prepares its gradient all-reduce in ``forward``, which the functional ``objective`` of the
    bare model would bypass. Holds the model, so its parameters are the model's own."""

    def __init__(self, model: VAE, free_bits: float) -> None:
        super().__init__()
        self.vae = model
        self.free_bits = free_bits

    def forward(self, x: torch.Tensor, eps: torch.Tensor, beta: float) -> torch.Tensor:
        # As in make_train_step: the trainer checks its data once, not per step.
        return objective(self.vae, None, x, eps, beta, self.free_bits, check_values=False)


def _ddp_step(ddp: DistributedDataParallel, train: TrainConfig, precision: str) -> StepFn:
    """``make_train_step`` through DDP: this rank's slice, gradients averaged over the ranks."""

    def step(
        optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor, index: int
    ) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        kind = x.device.type
        with matmul_precision(kind, precision):
            with autocast(kind, precision):
                value = ddp(x, eps, beta_at(train, index))
            value.backward()
        optimizer.step()
        return value.detach()

    return step


def _ddp_device_ids(device: torch.device) -> list[int | None] | None:
    """``device_ids`` for ``DistributedDataParallel``: the process's own accelerator (CUDA or
    XPU), None for the CPU (DDP takes no device ids there)."""
    return [device.index] if device.type in ("cuda", "xpu") else None


class Trainer(TrainerBase):
    __doc__ = TrainerBase.__doc__

    backend = "torch"

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
        self.world, self.rank = self._process_group()
        self.device = local_device(device) if self.world > 1 else select_device(device)
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
        self.optimizer = make_optimizer(self.model, self.train_config)
        if self.compile:
            require_compiler({self.device.type})
        self._eager_step = make_train_step(self.model, self.train_config, self.precision)
        self._compiled_step: Callable[..., torch.Tensor] | None = None
        self._step_count = 0
        if self.world > 1:
            # Every rank builds the same model; DDP's constructor checks the parameter shapes
            # across ranks. The compiled step all-reduces its own gradients (torch.func
            # bypasses DDP's hooks), so only the eager step goes through DDP.
            if not self.compile:
                wrapped = _Objective(self.model, self.train_config.free_bits)
                ddp = DistributedDataParallel(wrapped, device_ids=_ddp_device_ids(self.device))
                self._eager_step = _ddp_step(ddp, self.train_config, self.precision)

    def _process_group(self) -> tuple[int, int]:
        """``(world size, rank)``: (1, 0) for one device; refuses a mismatch with ``devices``."""
        if self.devices is None:
            return 1, 0
        world = dist.get_world_size() if dist.is_initialized() else None
        if world != self.devices and not (world is None and self.devices == 1):
            found = "no process group" if world is None else f"a process group of {world}"
            raise ConfigError(
                f"Trainer(devices={self.devices}) needs a torch.distributed process group of "
                f"world size {self.devices}, found {found}; launch with torchrun "
                f"--nproc-per-node {self.devices} and call vae_torch.distributed.initialize()"
            )
        if world is None or world == 1:
            return 1, 0
        if self.train_config.free_bits > 0:
            # The floor applies to the batch mean of each KL dimension: per-rank means floored
            # apart and then averaged are not the global mean floored.
            raise ConfigError(
                "free_bits > 0 is not supported by the torch data-parallel trainer (the floor "
                "needs the global batch mean of each KL dimension); train with free_bits=0, or "
                "with the JAX backend, whose sharded step is exact"
            )
        if not all_ranks_agree(self._settings_text()):
            raise ConfigError(
                f"rank {dist.get_rank()}: the ranks were started with different "
                "model, training or dtype settings"
            )
        return world, dist.get_rank()

    def _rows(self, batch: int) -> slice:
        """This rank's rows ``r*B/N : (r+1)*B/N`` of a global batch of B."""
        share = batch // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def _global_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-step losses averaged over the ranks (equal slices: the global-batch means); one
        all-reduce per call, not per step."""
        if self.world > 1:
            dist.all_reduce(losses)
            losses /= self.world
        return losses

    def _put(self, a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), device=self.device).to(
            next(self.model.parameters()).dtype
        )

    def _train_step(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self.compile:
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
        if self.world > 1 and not all_ranks_agree(state_digest(state)):
            raise ConfigError(f"rank {self.rank}: the ranks were given different weights")
        from_canonical(self.model, state)
        self.optimizer = make_optimizer(self.model, self.train_config)
        self._compiled_step = None  # bound to the optimizer it was made with
        self._step_count = 0

    def _state_dict(self) -> dict[str, np.ndarray]:
        return to_canonical(self.model, None)

    def _step(self) -> int:
        return self._step_count

    def _optimizer_state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for name, p in self.model.named_parameters():
            st = self.optimizer.state.get(p, {})
            for prefix, key in ((EXP_AVG, "exp_avg"), (EXP_AVG_SQ, "exp_avg_sq")):
                value = st.get(key)
                out[prefix + name] = (
                    np.zeros(tuple(p.shape), self.dtype)
                    if value is None
                    else value.detach().cpu().numpy().copy()
                )
        return dict(sorted(out.items(), key=lambda kv: kv[0].startswith(EXP_AVG_SQ)))

    def _load_optimizer_state_dict(self, tensors: dict[str, np.ndarray], step: int) -> None:
        mu, nu = split_optimizer_state(tensors, self.config)
        group = self.optimizer.param_groups[0]
        on_device = bool(group.get("fused") or group.get("capturable"))
        for name, p in self.model.named_parameters():
            step_t = torch.tensor(float(step), dtype=torch.float32)
            self.optimizer.state[p] = {
                "step": step_t.to(p.device) if on_device else step_t,
                "exp_avg": torch.as_tensor(mu[name], dtype=p.dtype, device=p.device).clone(),
                "exp_avg_sq": torch.as_tensor(nu[name], dtype=p.dtype, device=p.device).clone(),
            }
        self._step_count = step

    def _put_data(self, x: np.ndarray) -> torch.Tensor:
        return self._put(x)

    def _train_epoch(
        self, data: torch.Tensor, batches: np.ndarray, seed: int, epoch: int
    ) -> np.ndarray:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(seed, epoch))
        index = torch.as_tensor(batches.astype(np.int64), device=self.device)
        steps, batch = index.shape
        rows = self._rows(batch)
        losses = torch.empty(steps, device=self.device, dtype=data.dtype)
        dynamic = self.train_config.binarize == "dynamic"
        with self._denormals_flushed():
            for i in range(steps):
                # The random draws are made for the whole global batch, as in the 1-device
                # run, and sliced: example j gets the same binarization and noise on any rank.
                if dynamic:
                    x = torch.bernoulli(data.index_select(0, index[i]), generator=gen)[rows]
                else:
                    x = data.index_select(0, index[i, rows])
                eps = torch.randn(
                    (batch, self.config.latent_dim),
                    generator=gen,
                    device=self.device,
                    dtype=data.dtype,
                )
                losses[i] = self._train_step(x, eps[rows])
            return self._global_mean(losses).cpu().numpy()

    def _run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        rows = self._rows(xs.shape[1])
        xs_t, eps_t = self._put(xs[:, rows]), self._put(eps[:, rows])
        with self._denormals_flushed():
            losses = torch.stack([self._train_step(xs_t[i], eps_t[i]) for i in range(len(xs))])
            return self._global_mean(losses).cpu().numpy()

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


__all__ = [
    "Trainer",
    "autocast",
    "cpu_compiler",
    "make_compiled_step",
    "make_optimizer",
    "make_run_steps",
    "make_train_step",
    "matmul_precision",
    "require_compiler",
]
