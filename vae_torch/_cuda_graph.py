"""The whole torch training step replayed as a CUDA graph (``Trainer(compile="cudagraph")``).

One graph per batch shape: the eager step (``objective``'s forward and backward, then the
optimizer's own ``step()``, fused Adam marked capturable) is captured once, after a warm-up on a
side stream, and replayed for every later batch of that shape. Each replay reads its batch, its
noise and its KL weight from static tensors the graph was captured on (the warm-up changes the
KL weight from step to step, so it is a device tensor, never a Python float baked into the
graph) and writes the weights and Adam's state in place: the optimizer's ``state`` holds the
very tensors the graph updates, so ``optimizer_state_dict`` and a resume see every replayed step.
The dynamic binarization and the noise are drawn before the step, outside the graph, exactly as
for the eager step.

Not yet run on a GPU. The tests run it on the CPU through a stand-in for ``torch.cuda``'s graph
API (``CUDAGraph``, ``graph``, ``Stream``, ``stream``, ``current_stream``) that records the
kernels of the capture and replays them on the captured tensors, refusing a host read during
capture as CUDA does; that checks the data flow, the static inputs, the optimizer state and the
warm-up, but not CUDA's other capture rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from vae_common.errors import ConfigError
from vae_common.trainer_checks import cuda_graph_refused
from vae_common.training import TrainConfig
from vae_torch.losses import objective
from vae_torch.model import VAE
from vae_torch.train import autocast, matmul_precision

# Eager steps on a side stream before each capture, as torch's CUDA-graph recipe has them: the
# optimizer's state and the libraries' lazily made handles and workspaces are created there,
# outside the graph (which would otherwise record, and re-run at every replay, their set-up).
WARMUP_STEPS = 3
# Batch shapes captured at most (each graph holds its own memory pool); batches of further
# shapes take the eager step.
MAX_GRAPHS = 4

OptimizerT = TypeVar("OptimizerT", bound=torch.optim.Optimizer)


@dataclass
class _Captured:
    """One captured step: its graph, the static tensors it reads and the loss it writes."""

    graph: Any
    x: torch.Tensor
    eps: torch.Tensor
    beta: torch.Tensor
    loss: torch.Tensor
    # The gradients the capture allocated (in the graph's own memory pool); kept so that
    # nothing else is ever placed there while the graph lives.
    grads: list[torch.Tensor]


def graph_api(compile: bool | str, devices: int | None, device: torch.device, standin: Any) -> Any:
    """The graph API of ``Trainer(compile=compile)``: None unless ``compile == "cudagraph"``;
    then ``standin`` when one is set (the tests' CPU replay), else ``torch.cuda`` on a CUDA
    device. Refused for data-parallel training (``devices`` > 1: ``ConfigError``) and off CUDA
    (``DeviceError``, the text JAX's trainer gives). Not yet run on a GPU."""
    if compile != "cudagraph":
        return None
    if devices is not None and devices > 1:
        raise ConfigError(
            f"compile='cudagraph' runs on one device; got devices={devices} (use "
            "compile=True or False for data-parallel training)"
        )
    if standin is not None:
        return standin
    if device.type != "cuda":
        raise cuda_graph_refused(str(device.type))
    return torch.cuda


def mark_capturable(optimizer: OptimizerT) -> OptimizerT:
    """``optimizer`` with every parameter group marked ``capturable`` (its step counts on the
    device, no host read in ``step()``), which capture requires; returns it. Fused Adam keeps
    its step counts on the device anyway, so its update is unchanged."""
    for group in optimizer.param_groups:
        group["capturable"] = True
    return optimizer


class GraphedStep:
    """``step(x, eps, beta) -> loss``: one Adam step of ``optimizer`` on the batch x (B, C, H, W)
    with noise eps (B, L) and KL weight ``beta`` (a host float, already checked), replayed from
    the graph captured for x's shape, dtype and device (captured on the first batch of each,
    for up to ``MAX_GRAPHS`` shapes; a batch of a further shape takes the same step eagerly).

    The loss is a fresh 0-d device tensor (a copy of the graph's output; no host sync). The
    numbers are those of ``vae_torch.train.make_train_step``'s step on the same batch.

    Args:
      model, optimizer: the trainer's; the optimizer marked capturable (``mark_capturable``).
      train: the objective's settings (``free_bits``; ``beta`` comes with every call).
      precision: as for ``make_train_step`` (its contexts are applied around the capture).
      graphs: the graph API, ``torch.cuda`` or a stand-in with the same five names.
    """

    def __init__(
        self,
        model: VAE,
        optimizer: torch.optim.Optimizer,
        train: TrainConfig,
        precision: str,
        graphs: Any,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.free_bits = train.free_bits
        self.precision = precision
        self.graphs = graphs
        self._captured: dict[tuple[Any, ...], _Captured] = {}

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The batch shapes a graph has been captured for, in capture order."""
        return [key[0] for key in self._captured]

    def __call__(self, x: torch.Tensor, eps: torch.Tensor, beta: float) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, tuple(eps.shape), eps.dtype)
        captured = self._captured.get(key)
        if captured is None:
            if len(self._captured) >= MAX_GRAPHS:
                self.optimizer.zero_grad(set_to_none=True)
                return self._body(x, eps, beta)
            captured = self._capture(x, eps, beta)
            self._captured[key] = captured
        captured.x.copy_(x)
        captured.eps.copy_(eps)
        captured.beta.fill_(beta)
        captured.graph.replay()
        return captured.loss.clone()

    def _body(self, x: torch.Tensor, eps: torch.Tensor, beta: Any) -> torch.Tensor:
        # make_train_step's step after its zero_grad, the KL weight a 0-d tensor (captured) or
        # a float (eager).
        kind = x.device.type
        with matmul_precision(kind, self.precision):
            with autocast(kind, self.precision):
                value = objective(
                    self.model, None, x, eps, beta, self.free_bits, check_values=False
                )
            value.backward()
        self.optimizer.step()
        return value.detach()

    def _capture(self, x: torch.Tensor, eps: torch.Tensor, beta: float) -> _Captured:
        static_x, static_eps = x.clone(), eps.clone()
        static_beta = _host_checked_scalar(beta, x.dtype, x.device)
        # The warm-up steps (and, on the stand-in, the capture) really step the weights and
        # Adam's state: saved here and put back, in place, after the capture.
        saved = _snapshot(self.model, self.optimizer)
        graphs = self.graphs
        side = graphs.Stream()
        side.wait_stream(graphs.current_stream())
        with graphs.stream(side):
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(static_x, static_eps, static_beta)
        graphs.current_stream().wait_stream(side)
        # Gradients set to None before the capture: its backward allocates them in the graph's
        # memory pool, and every replay overwrites them (nothing accumulates).
        self.optimizer.zero_grad(set_to_none=True)
        graph = graphs.CUDAGraph()
        with graphs.graph(graph):
            loss = self._body(static_x, static_eps, static_beta)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        _restore(self.model, self.optimizer, saved)
        return _Captured(graph, static_x, static_eps, static_beta, loss, grads)


def _host_checked_scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d device tensor holding ``value``, which answers ``item()`` from the host.

    ``objective`` checks a concrete ``beta`` tensor by reading it (``item()``), a device sync
    that CUDA-graph capture forbids. The trainer's KL weight is ``beta_at`` of a checked
    ``TrainConfig`` (finite, >= 0), and only the capture reads it: so the read answers with the
    value the tensor held then, without touching the device."""
    t = torch.full((), value, dtype=dtype, device=device)
    host = float(value)
    t.item = lambda: host  # type: ignore[method-assign]
    return t


def _snapshot(model: VAE, optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, Any]]:
    """Copies of the parameters and of each one's optimizer state (None: no state yet)."""
    with torch.no_grad():
        return [
            (
                p.detach().clone(),
                {k: v.clone() for k, v in optimizer.state[p].items()}
                if optimizer.state.get(p)
                else None,
            )
            for p in model.parameters()
        ]


def _restore(
    model: VAE, optimizer: torch.optim.Optimizer, saved: list[tuple[torch.Tensor, Any]]
) -> None:
    """The parameters and optimizer state of ``saved``, copied into the tensors the graph
    captured; a state that did not exist before is zeroed (Adam's fresh state)."""
    with torch.no_grad():
        for p, (p0, state0) in zip(model.parameters(), saved, strict=True):
            p.copy_(p0)
            for k, v in optimizer.state[p].items():
                if state0 is None:
                    v.zero_()
                else:
                    v.copy_(state0[k])


__all__ = ["MAX_GRAPHS", "WARMUP_STEPS", "GraphedStep", "mark_capturable"]
