"""oneDNN's matmul for the dense layers of eager float32 training on the CPU.

torch runs ``F.linear`` on the CPU through its BLAS: MKL on x86. MKL picks its kernels by CPU
vendor and runs its AVX2 ones on AMD processors, while oneDNN (shipped in the same torch build;
inductor runs CPU linear layers with it) picks them by instruction set. On a 2-core AMD EPYC
(Zen 5, AVX-512) the 784-400-20 MLP's products run about twice as fast through oneDNN (the
README's speed section has the figures), and eager float32 training about 1.4x.

``linear`` takes oneDNN's path only where it computes what ``F.linear`` computes, up to float32
rounding: a float32 (B, in) input and float32 weights on the CPU, no autocast, outside
``torch.func`` transforms (the autograd formula of a custom op does not compose with them) and
outside ``torch.compile`` tracing, in a torch build that has the op. Everywhere else, and inside
``cpu_linear("blas")``, it is ``F.linear``. Compiled, the products could stay calls of these
custom ops (inductor lowers oneDNN's op itself only for frozen weights); the compiled training
step run that way, its gradients by ``torch.autograd.grad``, was no faster (x0.993 against
``F.linear``'s graph, interleaved A/B, MLP 784-400-20 batch 128), so the graph keeps
``F.linear``. The op, ``torch.ops.mkldnn._linear_pointwise``, is private to torch, hence the
check that it exists: a torch without it trains through ``F.linear``, at BLAS speed.

The counterpart has nothing to mirror: XLA picks its own GEMMs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from vae_common.errors import ConfigError

CPU_LINEAR_KINDS = ("onednn", "blas")

_LINEAR_POINTWISE: Any = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_kind = "onednn"


# Read once: torch.compile does not trace into torch.backends.
_AVAILABLE = _LINEAR_POINTWISE is not None and torch.backends.mkldnn.is_available()


def available() -> bool:
    """Whether this torch build has oneDNN and its linear op (x86 and Arm builds do)."""
    return _AVAILABLE


def cpu_linear_kind() -> str:
    """``"onednn"`` (the default) or ``"blas"``: which library the CPU float32 dense layers
    use where both could (``cpu_linear``)."""
    return _kind


@contextlib.contextmanager
def cpu_linear(kind: str) -> Iterator[None]:
    """Within the block, the CPU float32 dense layers use ``kind``: ``"onednn"`` (oneDNN's
    matmul where it applies, the default) or ``"blas"`` (``F.linear`` always: torch's BLAS)."""
    global _kind
    if kind not in CPU_LINEAR_KINDS:
        raise ConfigError(f"cpu_linear kind must be one of {list(CPU_LINEAR_KINDS)}, got {kind!r}")
    before, _kind = _kind, kind
    try:
        yield
    finally:
        _kind = before


# Custom ops: the products with an autograd formula of their own. Their names carry a
# version: torch's compile caches key a graph on the ops it calls, not on the autograd formula
# registered for them, so a change of ``_backward`` (or of an op) must come with new names, or a
# cache made by a user's own compiled code before the change would go on running the old one.
@torch.library.custom_op("vae_torch::onednn_linear_v1", mutates_args=())
def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")


@_onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


# The backward's two products take their operands as the forward made them and transpose inside
# the op: transposed views given to a custom op would be copied contiguous by inductor first.
@torch.library.custom_op("vae_torch::onednn_grad_input_v1", mutates_args=())
def _grad_input(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dx = grad @ W through oneDNN: grad (B, out), W (out, in)."""
    return _LINEAR_POINTWISE(grad, weight.t(), None, "none", [], "")


@_grad_input.register_fake
def _(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return grad.new_empty((grad.shape[0], weight.shape[1]))


@torch.library.custom_op("vae_torch::onednn_grad_weight_v1", mutates_args=())
def _grad_weight(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dW = grad^T @ x through oneDNN: grad (B, out), x (B, in)."""
    return _LINEAR_POINTWISE(grad.t(), x.t(), None, "none", [], "")


@_grad_weight.register_fake
def _(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return grad.new_empty((grad.shape[1], x.shape[1]))


def _setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    # The gradients of y = x W^T + b: dx = g W, dW = g^T x, db = sum_b g, the products also
    # through oneDNN; dx only where x needs it (not for the images at the first layer). Not
    # differentiable again (no double backward: nothing here needs one).
    x, weight = ctx.saved_tensors
    needs_x, needs_w, needs_b = ctx.needs_input_grad
    grad_x = _grad_input(grad, weight) if needs_x else None
    grad_w = _grad_weight(grad, x) if needs_w else None
    grad_b = grad.sum(0) if needs_b else None
    return grad_x, grad_w, grad_b


_onednn_linear.register_autograd(_backward, setup_context=_setup_context)


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else True


def applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``linear`` takes oneDNN's path for these arguments (see the module docstring)."""
    return (
        not torch.compiler.is_compiling()
        and _kind == "onednn"
        and bias is not None
        and x.dim() == 2
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == bias.dtype == torch.float32
        and weight.device.type == "cpu"
        and _AVAILABLE
        and not torch.is_autocast_enabled("cpu")
        and not _functorch_active()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where that applies (``applies``)."""
    if applies(x, weight, bias):
        assert bias is not None  # applies() checked it; for the type checker
        return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


__all__ = ["CPU_LINEAR_KINDS", "applies", "available", "cpu_linear", "cpu_linear_kind", "linear"]
