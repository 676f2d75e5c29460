"""Training and evaluation in PyTorch: ``torch.optim.Adam``, data resident on the device, no
host sync per step (losses are collected on the device and read once per epoch).

Mirrors ``vae_jax.train``: the same objective, the same Adam update
(``lr * m_hat / (sqrt(v_hat) + eps)``, eps outside the square root, bias-corrected in both), the
same batches (``vae_common.data.batch_indices``) and a ``Trainer`` with the same methods.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import types

import numpy as np
import torch

from vae_common.config import VAEConfig
from vae_common.data import check_batches
from vae_common.evaluation import evaluate_batches
from vae_common.training import (
    EXP_AVG,
    EXP_AVG_SQ,
    TrainConfig,
    beta_at,
    epoch_seed,
    split_optimizer_state,
)
from vae_torch.convert import from_canonical, to_canonical
from vae_torch.device import DeviceError, check_dtype, select_device, synchronize
from vae_torch.losses import elbo_terms, negative_iwae_bound, objective
from vae_torch.model import VAE, build_model, decode_mean, encode


def make_optimizer(model: VAE, train: TrainConfig, fused: bool | None = None) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the settings of ``train`` (optax.adam's update rule).

    ``fused=None`` uses the fused kernel where this torch build has one for the device.
    """
    kwargs = dict(lr=train.lr, betas=(train.b1, train.b2), eps=train.adam_eps)
    if fused is None or fused:
        try:
            return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, ValueError):
            if fused:
                raise
    return torch.optim.Adam(model.parameters(), **kwargs)


def train_step(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x,
    eps,
    beta=1.0,
    free_bits=0.0,
):
    """One eager Adam step on ``objective``; returns the loss as a 0-d device tensor (no sync).
    ``make_compiled_step`` is the compiled equivalent."""
    optimizer.zero_grad(set_to_none=True)
    value = objective(model, None, x, eps, beta, free_bits)
    value.backward()
    optimizer.step()
    return value.detach()


def _adam_hyperparameters(optimizer: torch.optim.Optimizer) -> dict:
    if not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) != 1:
        raise TypeError("make_compiled_step needs a torch.optim.Adam with one parameter group")
    group = optimizer.param_groups[0]
    if group["amsgrad"] or group["maximize"] or group["weight_decay"]:
        raise ValueError(
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


def require_compiler(device_types) -> None:
    """``DeviceError`` naming the missing C++ compiler when ``torch.compile`` would need one
    (any of ``device_types`` is ``"cpu"``) and it is not installed."""
    if "cpu" in set(device_types) and cpu_compiler() is None:
        raise DeviceError(
            f"torch.compile on the CPU needs a C++ compiler and {_compiler_name()!r} was not "
            "found; install one (e.g. apt install g++), point $CXX at one, or train without compile"
        )


def make_compiled_step(model: VAE, optimizer: torch.optim.Optimizer, free_bits=0.0, **options):
    """A training step whose forward and backward pass are one graph compiled by
    ``torch.compile(fullgraph=True)`` (``torch.func.grad_and_value`` of ``objective``), followed
    by ``torch.optim.Adam``'s own update function on the optimizer's own state (``exp_avg``,
    ``exp_avg_sq``, ``step``) with the optimizer's settings, the fused kernel where it has one.
    ``optimizer.state_dict()`` and the canonical optimizer state stay valid, and the numbers are
    those of ``train_step`` up to rounding.

    Returns ``step(x, eps, beta) -> loss`` (a 0-d tensor, no sync); ``beta`` may change between
    calls without recompiling (it enters the graph as a tensor). ``options`` go to
    ``torch.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``).

    Why this split: compiling only the objective leaves ``backward()`` and the optimizer to eager
    dispatch with graph breaks in between; one graph for the gradients removes that overhead.
    The update stays outside the graph because torch's fused Adam kernel cannot be traced
    (``torch.compile`` refuses it), and the Adam inductor generates instead ran about half as
    fast as the fused kernel on a 2-core CPU (measured with ``vae bench``).
    """
    from torch.optim.adam import adam as adam_update

    hyper = _adam_hyperparameters(optimizer)
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    if {id(p) for p in optimizer.param_groups[0]["params"]} != {id(p) for p in params}:
        raise ValueError("the optimizer must hold exactly the model's parameters")
    require_compiler({p.device.type for p in params})
    group = optimizer.param_groups[0]

    def gradients(params, x, eps, beta):
        value_and_grads = torch.func.grad_and_value(
            lambda p: objective(model, p, x, eps, beta, free_bits)
        )
        grads, value = value_and_grads(dict(zip(names, params, strict=True)))
        return value, [grads[name] for name in names]

    compiled = torch.compile(_own_code(gradients), fullgraph=True, **options)

    def step(x, eps, beta=1.0):
        states = [_adam_state(optimizer, p) for p in params]
        beta_t = torch.as_tensor(beta, dtype=x.dtype, device=x.device)
        # No autograd graph around the step: func.grad differentiates on its own, and the
        # parameters are then updated in place.
        with torch.no_grad():
            value, grads = compiled(params, x, eps, beta_t)
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


def _own_code(fn):
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


class Trainer:
    """Stateful trainer; mirrors ``vae_jax.Trainer`` method by method.

    Args:
      config: the model.
      train: optimizer and objective settings.
      dtype: ``"float32"`` or ``"float64"`` (checked against the device).
      device: a name for ``select_device`` (None: ``$VAE_TORCH_DEVICE``, then xpu, cuda, mps, cpu).
      compile: compute each step's loss and gradients in one compiled graph, then torch's
        (fused) Adam update (``make_compiled_step``); the first step compiles (seconds to a
        minute).
      flush_denormal: on the CPU, flush denormals to zero while training (``train_epoch`` and
        ``run_steps``; switched off again after). Adam's moments of rarely-updated weights decay
        into denormals, which slow x86 CPUs by ~25%; XLA flushes them too.
    """

    backend = "torch"

    def __init__(
        self,
        config: VAEConfig,
        train: TrainConfig | None = None,
        dtype="float32",
        device=None,
        compile=False,
        flush_denormal=True,
    ):
        self.config = config
        self.train_config = train or TrainConfig()
        self.device = select_device(device)
        check_dtype(self.device, dtype)
        self.flush_denormal = bool(flush_denormal) and self.device.type == "cpu"
        self.model = build_model(config, dtype).to(self.device)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.optimizer = make_optimizer(self.model, self.train_config)
        self.compile = bool(compile)
        if self.compile:
            require_compiler({self.device.type})
        self._compiled_step = None
        self._step_count = 0

    def _put(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), device=self.device).to(
            next(self.model.parameters()).dtype
        )

    def _train_step(self, x, eps):
        beta = beta_at(self.train_config, self._step_count)
        if self.compile:
            if self._compiled_step is None:
                self._compiled_step = make_compiled_step(
                    self.model, self.optimizer, self.train_config.free_bits
                )
            value = self._compiled_step(x, eps, beta)
        else:
            value = train_step(
                self.model, self.optimizer, x, eps, beta, self.train_config.free_bits
            )
        self._step_count += 1
        return value

    @contextlib.contextmanager
    def _denormals_flushed(self):
        # A process-wide switch: on only while this trainer computes, off again after.
        if not self.flush_denormal:
            yield
            return
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)

    def load_state_dict(self, state: dict) -> None:
        """Start from canonical weights (fresh Adam state, step 0)."""
        from_canonical(self.model, state)
        self.optimizer = make_optimizer(self.model, self.train_config)
        self._compiled_step = None  # bound to the optimizer it was made with
        self._step_count = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """The current weights, canonical names and layouts, as numpy arrays."""
        return to_canonical(self.model, None)

    @property
    def step(self) -> int:
        return self._step_count

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """Adam's moments under canonical names (``adam.exp_avg.<param>``...)."""
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

    def load_optimizer_state_dict(self, tensors: dict, step: int) -> None:
        """Restore Adam's moments (canonical names) and the step count."""
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
        self._step_count = int(step)

    def put_data(self, x: np.ndarray) -> torch.Tensor:
        """Images (N, C, H, W) moved to the device once, in the model dtype."""
        return self._put(x)

    def train_epoch(self, data, batches: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        """One epoch over ``batches`` (S, B) of ``data``; returns the (S,) losses (one host sync).

        Noise and dynamic binarization come from a generator seeded by ``(seed, epoch)``.
        """
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(seed, epoch))
        index = torch.as_tensor(check_batches(batches, len(data), wide=True), device=self.device)
        steps, batch = index.shape
        losses = torch.empty(steps, device=self.device, dtype=data.dtype)
        dynamic = self.train_config.binarize == "dynamic"
        with self._denormals_flushed():
            for i in range(steps):
                x = data.index_select(0, index[i])
                if dynamic:
                    x = torch.bernoulli(x, generator=gen)
                eps = torch.randn(
                    (batch, self.config.latent_dim),
                    generator=gen,
                    device=self.device,
                    dtype=data.dtype,
                )
                losses[i] = self._train_step(x, eps)
            return losses.cpu().numpy()

    def run_steps(self, xs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """Adam steps on given batches (S, B, C, H, W) and noise (S, B, L); returns (S,) losses."""
        xs, eps = self._put(xs), self._put(eps)
        with self._denormals_flushed():
            losses = torch.stack([self._train_step(xs[i], eps[i]) for i in range(len(xs))])
            return losses.cpu().numpy()

    def evaluate(
        self, x: np.ndarray, seed: int = 0, batch_size: int = 500, iwae_k: int = 0
    ) -> dict:
        """Mean -ELBO, its terms and (``iwae_k > 1``) the IWAE estimate of -log p(x), in nats.

        The noise comes from ``vae_common.data.standard_normal(seed, stream, ...)``, the same
        arrays in both backends, so one checkpoint evaluates to the same numbers in each.
        """
        return evaluate_batches(
            self._batch_terms,
            self._batch_iwae,
            x,
            self.config.latent_dim,
            self.dtype,
            seed,
            batch_size,
            iwae_k,
        )

    @torch.no_grad()
    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """E[x|z] at z = the posterior mean, (B, C, H, W)."""
        mean, _ = encode(self.model, None, self._put(x))
        return decode_mean(self.model, None, mean).cpu().numpy()

    @torch.no_grad()
    def sample(self, z: np.ndarray) -> np.ndarray:
        """E[x|z] for latents z (B, L) (e.g. prior draws), (B, C, H, W)."""
        return decode_mean(self.model, None, self._put(z)).cpu().numpy()

    @torch.no_grad()
    def encode_mean(self, x: np.ndarray) -> np.ndarray:
        """Posterior means (B, L)."""
        return encode(self.model, None, self._put(x))[0].cpu().numpy()

    @torch.no_grad()
    def _batch_terms(self, x, eps):
        r, k = elbo_terms(self.model, None, self._put(x), self._put(eps))
        return r.double().cpu().numpy(), k.double().cpu().numpy()

    @torch.no_grad()
    def _batch_iwae(self, x, eps):
        bound = negative_iwae_bound(self.model, None, self._put(x), self._put(eps))
        return bound.double().cpu().numpy()

    def synchronize(self) -> None:
        """Wait until all queued work on the trainer's device has finished."""
        synchronize(self.device)


__all__ = [
    "Trainer",
    "cpu_compiler",
    "make_compiled_step",
    "make_optimizer",
    "require_compiler",
    "train_step",
]
