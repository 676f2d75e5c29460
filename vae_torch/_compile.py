"""torch's compile machinery for the training step: ``torch.compile`` of the gradients, the
fused Adam update outside the graph, and the C++ compiler check that inductor needs on the CPU.

The counterpart of ``vae_jax._conv``: backend-specific machinery kept out of ``train.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch

from vae_common.errors import ConfigError, DeviceError
from vae_torch.losses import objective
from vae_torch.model import VAE


def _adam_hyperparameters(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) != 1:
        raise ConfigError("make_compiled_step needs a torch.optim.Adam with one parameter group")
    group = optimizer.param_groups[0]
    if group["amsgrad"] or group["maximize"] or group["weight_decay"]:
        raise ConfigError(
            "make_compiled_step supports plain Adam (no amsgrad, maximize or weight decay)"
        )
    b1, b2 = group["betas"]
    return dict(lr=group["lr"], beta1=b1, beta2=b2, eps=group["eps"])


def _compiler_name() -> str:
    # What inductor runs for CPU kernels: $CXX, else g++ (clang++ on macOS).
    return os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")


def cpu_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` builds CPU kernels with (``$CXX``, else ``g++``;
    ``clang++`` on macOS), as a path, or None when it is not installed."""
    return shutil.which(_compiler_name())


def require_compiler(device_types: Iterable[str]) -> None:
    """``DeviceError`` naming the missing C++ compiler when ``torch.compile`` would need one
    (any of ``device_types`` is ``"cpu"``) and it is not installed."""
    if "cpu" in set(device_types) and cpu_compiler() is None:
        raise DeviceError(
            f"torch.compile on the CPU needs a C++ compiler and {_compiler_name()!r} was not "
            "found; install one (e.g. apt install g++), point $CXX at one, or train without compile"
        )


# How many distinct call keys (``_call_key``) get a compiled graph of their own, run without
# guard evaluation; calls of further keys share one guarded compiled function.
OWN_GRAPHS = 4
# Calls of a key made with guards evaluated before they are skipped: the first compiles, the
# second proves the guards of the first accept the next call too (nothing it guards on changes
# from call to call).
GUARDED_CALLS = 2


def make_compiled_step(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    free_bits: float = 0.0,
    data_parallel: bool = False,
    skip_guards: bool = True,
    **options: Any,
) -> Callable[..., torch.Tensor]:
    """A training step whose forward and backward pass are one graph compiled by
    ``torch.compile(fullgraph=True)`` (``torch.func.grad_and_value`` of ``objective``), followed
    by ``torch.optim.Adam``'s own update function on the optimizer's own state (``exp_avg``,
    ``exp_avg_sq``, ``step``) with the optimizer's settings, the fused kernel where it has one.
    ``optimizer.state_dict()`` and the canonical optimizer state stay valid, and the numbers are
    those of ``train_step`` up to rounding.

    Returns ``step(x, eps, beta) -> loss`` (a 0-d tensor, no sync); ``beta`` may change between
    calls without recompiling (it enters the graph as a tensor). ``options`` go to
    ``torch.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``).

    ``skip_guards``: each call key (the shapes, dtypes and devices of x and eps, and the
    ambient autocast and TF32 settings: ``_call_key``) gets a compiled function of its own, up
    to ``OWN_GRAPHS`` keys, so that each holds exactly one graph; after ``GUARDED_CALLS``
    guarded calls of a key, its calls run under
    ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``, which skips the guard checks
    (with one graph there is nothing left to tell apart). The dispatch on the exact key, here
    in Python, is what keeps another shape (an epoch's last, smaller batch) or another precision
    from ever running a graph made for different inputs. The numbers are the guarded path's:
    the same compiled code runs either way. False: one guarded compiled function for every call
    (torch's automatic dynamic shapes after a second shape).

    ``data_parallel``: this process is one rank of a ``torch.distributed`` group and its batch
    one slice of the global batch (or all of it on every rank, for a batch the ranks do not
    divide under ``Trainer(uneven="replicate")``); the gradients are averaged over the ranks
    (one all-reduce of all of them, flattened) before the update, as
    ``DistributedDataParallel`` would do: DDP's hooks never fire here, because ``torch.func``
    computes gradients without ``backward()``.

    Why this split: compiling only the objective leaves ``backward()`` and the optimizer to eager
    dispatch with graph breaks in between; one graph for the gradients removes that overhead.
    The update stays outside the graph because torch's fused Adam kernel cannot be traced
    (``torch.compile`` refuses it), and the Adam inductor generates instead was slower than the
    fused kernel (the README's speed section has the figures).
    """
    from torch.optim.adam import adam as adam_update

    hyper = _adam_hyperparameters(optimizer)
    names = [name for name, _ in model.named_parameters()]
    params: list[torch.Tensor] = [p for _, p in model.named_parameters()]
    if {id(p) for p in optimizer.param_groups[0]["params"]} != {id(p) for p in params}:
        raise ConfigError("the optimizer must hold exactly the model's parameters")
    require_compiler({p.device.type for p in params})
    group = optimizer.param_groups[0]
    if data_parallel and not torch.distributed.is_initialized():
        raise ConfigError("make_compiled_step(data_parallel=True) needs a process group")

    def gradients(
        params: list[torch.Tensor], x: torch.Tensor, eps: torch.Tensor, beta: Any
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        value_and_grads = torch.func.grad_and_value(
            lambda p: objective(model, p, x, eps, beta, free_bits)
        )
        grads, value = value_and_grads(dict(zip(names, params, strict=True)))
        return value, [grads[name] for name in names]

    def compile_gradients() -> Callable[..., Any]:
        return torch.compile(_own_code(gradients), fullgraph=True, **options)

    shared = compile_gradients()
    own: dict[tuple[Any, ...], list[Any]] = {}  # key -> [compiled function, guarded calls]

    def gradients_of(
        x: torch.Tensor, eps: torch.Tensor, beta_t: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not skip_guards:
            return shared(params, x, eps, beta_t)
        key = _call_key(x, eps)
        entry = own.get(key)
        if entry is None:
            if len(own) >= OWN_GRAPHS:
                return shared(params, x, eps, beta_t)
            entry = own[key] = [compile_gradients(), 0]
        fn, calls = entry
        if calls < GUARDED_CALLS:
            entry[1] = calls + 1
            return fn(params, x, eps, beta_t)
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return fn(params, x, eps, beta_t)

    def step(x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        states = [_adam_state(optimizer, p) for p in params]
        beta_t = torch.as_tensor(beta, dtype=x.dtype, device=x.device)
        # No autograd graph around the step: func.grad differentiates on its own, and the
        # parameters are then updated in place.
        with torch.no_grad():
            value, grads = gradients_of(x, eps, beta_t)
            if data_parallel:
                grads = _average_over_ranks(grads)
            adam_update(
                params,
                grads,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                [s["step"] for s in states],
                foreach=group["foreach"],
                capturable=group["capturable"],
                differentiable=False,
                fused=group["fused"],
                grad_scale=None,
                found_inf=None,
                has_complex=False,
                amsgrad=False,
                weight_decay=0.0,
                maximize=False,
                **hyper,
            )
        return value

    return step


def _call_key(x: torch.Tensor, eps: torch.Tensor) -> tuple[Any, ...]:
    """What tells the compiled gradients' graphs apart, read on the host: the shape, dtype,
    device and strides of the batch and the noise, and the process-wide settings torch.compile
    guards a graph on (autocast on the batch's device type and its dtype, TF32 and reduced-
    precision reductions, deterministic algorithms, grad mode, default dtype, thread count)."""
    kind = x.device.type
    return (
        tuple(x.shape),
        x.stride(),
        x.dtype,
        x.device,
        tuple(eps.shape),
        eps.stride(),
        eps.dtype,
        eps.device,
        torch.is_autocast_enabled(kind),
        torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.is_grad_enabled(),
        torch.get_default_dtype(),
        torch.get_num_threads(),
    )


def _average_over_ranks(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each gradient over the ranks, through one flat all-reduce."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    return [
        part.view_as(g)
        for part, g in zip(torch.split(flat, [g.numel() for g in grads]), grads, strict=True)
    ]


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own. torch.compile keeps its graphs per code object and
    stops at ``torch._dynamo.config.recompile_limit`` (8) of them, failing outright under
    ``fullgraph=True``: without this, the ninth model compiled in one process (a sweep, a test
    session) would raise, and every call would check the guards of all earlier models."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _adam_state(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    """The Adam state of ``p``, created as ``torch.optim.Adam`` creates it on its first step
    (zero moments; a float32 step count on ``p``'s device for the fused or capturable kernels,
    on the host otherwise)."""
    state = optimizer.state[p]
    if not state:
        group = optimizer.param_groups[0]
        on_device = bool(group["fused"] or group["capturable"])
        state["step"] = torch.zeros(
            (), dtype=torch.float32, device=p.device if on_device else torch.device("cpu")
        )
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


__all__ = ["GUARDED_CALLS", "OWN_GRAPHS", "cpu_compiler", "make_compiled_step", "require_compiler"]
