"""The contenders: each builds its trainer for a ``Workload`` and returns ``run_epoch``.

``run_epoch(epoch)`` trains one epoch and returns its (steps,) per-step losses as a numpy array;
reading them back waits for the device, so a clock read after it sees finished work. Every
library contender starts from ``Workload.initial_weights()`` and trains through the library's
own ``Trainer`` or its public step functions, on the batches and noise ``Trainer.train_epoch``
uses for the same ``(seed, epoch)``. The reference contender is independent on purpose: the
canonical PyTorch loop the others are measured against.

With ``Workload.devices`` set, the ``Trainer`` contenders (``jax_epoch``, ``torch_eager``,
``torch_compile``) build ``Trainer(devices=N)``: the data-parallel rows of
``vae_tools.bench.data_parallel``, which must run where the N devices (JAX) or the process group
of N ranks (torch) exist.

JAX and torch are imported only when one of their contenders is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vae_common.data import check_batches
from vae_common.errors import ConfigError
from vae_tools.bench.workload import Workload

EpochFn = Callable[[int], np.ndarray]


def _jax_trainer(w: Workload) -> tuple[Any, Any]:
    from vae_jax.train import Trainer

    # JAX has no Intel GPU backend: on an XPU machine its rows run on the CPU (said in the output).
    trainer = Trainer(
        w.config,
        w.train,
        w.dtype,
        device="cpu" if w.device == "xpu" else w.device,
        devices=w.devices,
        precision=w.precision,
    )
    trainer.load_state_dict(w.initial_weights())
    return trainer, trainer.put_data(w.data)


def jax_epoch(w: Workload) -> EpochFn:
    """``vae_jax.train.Trainer.train_epoch``: the whole epoch in one compiled ``lax.scan`` (a
    jitted step per batch for conv models on the CPU, where XLA runs the scan slower)."""
    trainer, data = _jax_trainer(w)

    def run_epoch(epoch: int) -> np.ndarray:
        return trainer.train_epoch(data, w.batches(epoch), w.seed, epoch)

    return run_epoch


def jax_step(w: Workload) -> EpochFn:
    """One dispatch of ``vae_jax.train.make_indexed_step`` per batch, on the trainer's state:
    step i of epoch e is exactly ``Trainer.train_epoch``'s (the same key, ``epoch_key(seed, e)``
    folded with i), one host sync per epoch."""
    import jax
    import jax.numpy as jnp

    from vae_jax.train import epoch_key, make_indexed_step

    trainer, data = _jax_trainer(w)
    step = make_indexed_step(trainer.model, trainer.train_config, trainer.precision)

    def run_epoch(epoch: int) -> np.ndarray:
        key = jax.device_put(epoch_key(w.seed, epoch), trainer.device)
        state, losses = trainer.state, []
        for i, idx in enumerate(check_batches(w.batches(epoch), len(w.data))):
            state, loss = step(state, data, idx, key, np.int32(i))
            losses.append(loss)
        trainer.state = state
        return np.asarray(jnp.stack(losses))

    return run_epoch


def _torch_trainer(w: Workload, compile: bool | str = False, graphs: Any = None) -> tuple[Any, Any]:
    from vae_torch.train import Trainer

    cls: type[Any] = Trainer
    if graphs is not None:
        # A stand-in for torch.cuda's graph API (the tests'): a Trainer that replays with it.
        cls = type("Trainer", (Trainer,), {"_graph_api": graphs})
    trainer = cls(
        w.config,
        w.train,
        w.dtype,
        device=w.device,
        compile=compile,
        devices=w.devices,
        precision=w.precision,
    )
    trainer.load_state_dict(w.initial_weights())
    return trainer, trainer.put_data(w.data)


def torch_eager(w: Workload) -> EpochFn:
    """``vae_torch.train.Trainer.train_epoch``: eager steps, fused Adam, BCE-with-logits, denormals
    flushed on the CPU, losses collected on the device and read once per epoch."""
    trainer, data = _torch_trainer(w)
    return lambda epoch: trainer.train_epoch(data, w.batches(epoch), w.seed, epoch)


def torch_compile(w: Workload) -> EpochFn:
    """``Trainer(compile=True).train_epoch``: gradients from one compiled graph, then the fused
    Adam update (the first epoch includes the compilation)."""
    trainer, data = _torch_trainer(w, compile=True)
    return lambda epoch: trainer.train_epoch(data, w.batches(epoch), w.seed, epoch)


def torch_cudagraph(w: Workload, graphs: Any = None) -> EpochFn:
    """``Trainer(compile="cudagraph").train_epoch``: the library's eager step (forward, backward,
    fused Adam marked capturable) captured once as a CUDA graph after a warm-up and replayed for
    every batch, the batch, noise and KL weight written into the graph's static tensors
    (``vae_torch._cuda_graph``); the first epoch includes the capture.

    Not yet run on a GPU: the tests run it on the CPU through a stand-in for the graph API that
    records the captured kernels and replays them on the same tensors, which checks the data,
    the noise and the optimizer state, but not CUDA's capture rules.

    Args:
      w: the workload (needs ``w.device == "cuda"`` unless ``graphs`` is given).
      graphs: the graph API: None for ``torch.cuda``, or an object with the same ``CUDAGraph``,
        ``graph``, ``Stream``, ``stream`` and ``current_stream`` (the tests pass one that
        records and replays the CPU kernels).
    """
    trainer, data = _torch_trainer(w, compile="cudagraph", graphs=graphs)
    return lambda epoch: trainer.train_epoch(data, w.batches(epoch), w.seed, epoch)


def reference_step(model: Any, optimizer: Any, x: Any) -> float:
    """One step of the canonical loop on the batch x (B, C, H, W): sigmoid, then BCE summed over
    the batch and the pixels, plus the summed analytic KL; returns ``loss.item()`` (a host sync)."""
    import torch
    import torch.nn.functional as F

    optimizer.zero_grad()
    mean, logvar = model.encode(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    recon = torch.sigmoid(model.decode(z))
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
    loss = bce + kld
    loss.backward()
    optimizer.step()
    return loss.item()


def reference_eager(w: Workload) -> EpochFn:
    """The canonical eager PyTorch loop, written the way tutorials write it: a shuffling
    ``DataLoader``, torch's default weights and Adam (for-loop kernel), ``reference_step``, and
    denormals left on; its dense layers run ``F.linear`` (torch's BLAS: ``cpu_linear("blas")``),
    as ``nn.Linear`` does. Its shuffling and noise come from torch's global generator, seeded
    once with ``w.seed``; ``epoch`` is not used."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from vae_torch._onednn import cpu_linear
    from vae_torch.device import select_device
    from vae_torch.model import build_model

    dev = select_device(w.device)
    torch.manual_seed(w.seed)
    model = build_model(w.config, w.dtype).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=w.train.lr)
    data = torch.as_tensor(w.data, device=dev).to(next(model.parameters()).dtype)
    loader = DataLoader(TensorDataset(data), batch_size=w.batch_size, shuffle=True, drop_last=True)

    def run_epoch(epoch: int) -> np.ndarray:
        torch.set_flush_denormal(False)
        model.train()
        with cpu_linear("blas"):
            return np.array([reference_step(model, optimizer, x) for (x,) in loader])

    return run_epoch


CONTENDERS: dict[tuple[str, str], Callable[[Workload], EpochFn]] = {
    ("jax", "step"): jax_step,
    ("jax", "epoch"): jax_epoch,
    ("torch", "eager"): torch_eager,
    ("torch", "compile"): torch_compile,
    ("torch", "cudagraph"): torch_cudagraph,
    ("reference", "eager"): reference_eager,
}
MODES: dict[str, tuple[str, ...]] = {
    backend: tuple(m for b, m in CONTENDERS if b == backend)
    for backend in ("jax", "torch", "reference")
}
# The modes that train through ``Trainer.train_epoch`` and so have a data-parallel form
# (``Trainer(devices=N)``); the others step through functions of one device.
DP_MODES: dict[str, tuple[str, ...]] = {"jax": ("epoch",), "torch": ("eager", "compile")}


def make_contender(backend: str, mode: str, w: Workload) -> EpochFn:
    """Build the ``backend``/``mode`` contender (see ``MODES``) for ``w``; with ``w.devices``
    set, only the modes of ``DP_MODES``."""
    if (backend, mode) not in CONTENDERS:
        raise ConfigError(f"unknown contender {backend}/{mode}; choose from {MODES}")
    if w.devices is not None and mode not in DP_MODES.get(backend, ()):
        raise ConfigError(
            f"{backend}/{mode} has no data-parallel form; data-parallel modes: {DP_MODES}"
        )
    return CONTENDERS[backend, mode](w)
