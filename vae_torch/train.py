"""Training in PyTorch: ``torch.optim.Adam`` and the training steps, no host sync per step (the
losses stay on the device).

Mirrors ``vae_jax.train`` name by name: the same objective (``vae_torch.losses.objective``), the
same Adam update (``lr * m_hat / (sqrt(v_hat) + adam_eps)``, bias-corrected), and the contexts
that apply a training precision. The compiled step lives in ``vae_torch._compile``; the stateful
``Trainer`` on the shared contract (``vae_common.trainer.TrainerBase``) in ``vae_torch.trainer``
(both importable from here too).

Under ``Trainer(devices=N)`` each rank steps through ``DistributedDataParallel`` (``_ddp_step``
here; the process group in ``vae_torch.data_parallel``), which averages the gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from vae_common.precision import check_precision, tf32_applies
from vae_common.training import TrainConfig, beta_at
from vae_torch._compile import cpu_compiler, make_compiled_step, require_compiler
from vae_torch.losses import objective
from vae_torch.model import VAE

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


def _ddp_step(model: VAE, train: TrainConfig, precision: str, device: torch.device) -> StepFn:
    """``make_train_step`` through DDP on ``model`` (on ``device``): this rank's slice,
    gradients averaged over the ranks. Every rank builds the same model; DDP's constructor
    checks the parameter shapes across ranks."""
    ddp = DistributedDataParallel(
        _Objective(model, train.free_bits), device_ids=_ddp_device_ids(device)
    )

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


# ``Trainer`` is built on the functions above; imported last so that ``from vae_torch.train
# import Trainer`` keeps working (``vae_torch/__init__.py`` imports this module first).
from vae_torch.trainer import Trainer  # noqa: E402

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
