"""The data-parallel parity problem and its training in this process.

One problem (weights, batches and their noise, a small dataset with its epoch of batch
indices) trains from the same start through the ``Trainer``'s two paths: ``run_steps`` (given
batches and noise, comparable across backends) and ``train_epoch`` (batches gathered by index,
noise and dynamic binarization drawn from the seed, comparable within a backend).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.errors import UsageError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig

PATHS = ("run_steps", "train_epoch")


@dataclass(frozen=True)
class Problem:
    """The shared problem, numpy float64: ``state`` (canonical weights), ``xs`` (S, B, C, H, W)
    and ``eps`` (S, B, L) for ``run_steps``; ``data`` (n, C, H, W) and ``batches`` (S, B) for
    ``train_epoch`` at ``(seed, epoch)`` with ``epoch_train`` (dynamic binarization)."""

    config: VAEConfig
    train: TrainConfig
    epoch_train: TrainConfig
    state: dict[str, np.ndarray]
    xs: np.ndarray
    eps: np.ndarray
    data: np.ndarray
    batches: np.ndarray
    seed: int
    epoch: int


def make_problem(
    config: VAEConfig,
    steps: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 1e-3,
    beta: float = 1.0,
    state: dict[str, np.ndarray] | None = None,
) -> Problem:
    """Weights (``init_canonical`` unless given), uniform [0, 1] images, standard normal noise,
    all from ``seed``; the epoch's batches are a permutation of 2 x steps x batch_size images."""
    if steps < 1 or batch_size < 1:
        raise UsageError(f"steps and batch size must be positive, got {steps} and {batch_size}")
    rng = np.random.default_rng([seed, 3])
    shape = config.input_shape
    xs = rng.random((steps, batch_size) + shape)
    eps = rng.standard_normal((steps, batch_size, config.latent_dim))
    n = 2 * steps * batch_size
    data = rng.random((n,) + shape)
    batches = rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size)
    train = TrainConfig(lr=lr, beta=beta)
    return Problem(
        config,
        train,
        TrainConfig(lr=lr, beta=beta, binarize="dynamic"),
        {k: np.asarray(v, np.float64) for k, v in (state or init_canonical(config, seed)).items()},
        xs,
        eps,
        data,
        batches,
        seed,
        1,
    )


def train_both_paths(
    backend: str,
    problem: Problem,
    dtype: str,
    devices: int | None = None,
    device: Any = None,
    compile: bool = False,
    paths: tuple[str, ...] = PATHS,
) -> dict[str, dict[str, Any]]:
    """Train ``problem`` with this process's ``backend`` ``Trainer`` (``devices`` as given: the
    N devices or the process group must exist here). Returns, per path of ``paths``, ``losses``
    (S,) and ``params`` (canonical name -> array), all float64 numpy."""
    trainer_cls = _trainer_class(backend, dtype)
    with _exact_matmuls(backend):
        return _train_both(trainer_cls, problem, dtype, devices, device, compile, paths)


def _train_both(
    trainer_cls: Any,
    problem: Problem,
    dtype: str,
    devices: int | None,
    device: Any,
    compile: bool,
    paths: tuple[str, ...],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path, train in (("run_steps", problem.train), ("train_epoch", problem.epoch_train)):
        if path not in paths:
            continue
        trainer = trainer_cls(
            problem.config, train, dtype, device=device, compile=compile, devices=devices
        )
        trainer.load_state_dict(problem.state)
        if path == "run_steps":
            losses = trainer.run_steps(problem.xs, problem.eps)
        else:
            data = trainer.put_data(problem.data)
            losses = trainer.train_epoch(data, problem.batches, problem.seed, problem.epoch)
        out[path] = {
            "losses": np.asarray(losses, np.float64),
            "params": {k: np.asarray(v, np.float64) for k, v in trainer.state_dict().items()},
        }
    return out


def _trainer_class(backend: str, dtype: str) -> Any:
    if backend == "jax":
        import vae_jax.train
        from vae_jax.device import enable_float64

        if dtype == "float64":
            enable_float64()
        return vae_jax.train.Trainer
    if backend == "torch":
        import torch

        import vae_torch.train

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return vae_torch.train.Trainer
    raise UsageError(f"backend must be 'jax' or 'torch', got {backend!r}")


def _exact_matmuls(backend: str) -> Any:
    # JAX: full-precision float32 matmuls on GPUs (TF32 otherwise), as in the parity checks.
    if backend != "jax":
        return contextlib.nullcontext()
    import jax

    return jax.default_matmul_precision("highest")


def jax_device(torch_device: str | None) -> str | None:
    """The JAX platform that matches a torch device name (JAX has no XPU or MPS backend: the
    CPU then; None for auto)."""
    if torch_device in (None, "", "auto"):
        return None
    kind = str(torch_device).split(":")[0]
    return "cuda" if kind == "cuda" else "cpu"


@contextlib.contextmanager
def torch_threads(k: int) -> Iterator[None]:
    """``torch.set_num_threads(k)`` inside the block, the previous count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["PATHS", "Problem", "jax_device", "make_problem", "torch_threads", "train_both_paths"]
