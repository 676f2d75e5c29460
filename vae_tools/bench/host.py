"""What the figures were measured on: versions and settings, the matmul peak, the ceilings.

Bounds on a training step's speed, each measured in the same run as the rows:

- ``gemm_only_epoch``: the step's matrix products alone, in torch, as an epoch of such steps
  timed in the same interleaved rounds as the rows (``vae_tools.bench.run``): the issue's
  "ceiling" that every row's ``ceiling_fraction`` refers to. The ceiling and the rows thus
  share every slow spell of the host and are the same statistic (the median timed epoch).
- ``gemm_ceiling``: the same products, each timed alone, best of several loops, summed: the
  products at their fastest (hot caches, no other work between them). An optimistic bound,
  kept beside the interleaved one (``gemm_best_of_fraction``).
- ``adam_floor_seconds``: one update of torch's fused Adam over the model's parameters, the
  least an Adam step can cost (one pass reading parameters, gradients and both moments and
  writing three of them); added to the ceiling's seconds per step, it gives the bound a step
  that also updates its weights can reach.
- ``gemm_ceiling(..., library="jax")``: the products as XLA runs them, one jitted dot each;
  ``library="onednn"``: through torch's oneDNN matmul instead of its BLAS (MKL on x86). Which
  GEMM library is fastest depends on the machine: on an AMD EPYC (Zen 5) MKL's SGEMM runs at
  about half the speed of oneDNN's and of XLA's (the README's speed section has the figures).

Timed with torch (or JAX); without the library installed they are None.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.errors import ConfigError
from vae_common.spec import param_spec


def host_info(device: str) -> dict[str, Any]:
    """Machine, Python and library versions, thread count and the precision settings that move
    the figures (TF32, JAX's default matmul precision), for the frameworks installed."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "device": device,
    }
    try:
        import torch
    except ImportError:
        pass
    else:
        info.update(
            {
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            }
        )
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
        if device == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
            info["gpu"] = torch.xpu.get_device_name()
    try:
        import flax
        import jax
        import optax
    except ImportError:
        pass
    else:
        info.update(
            {
                "jax": jax.__version__,
                "flax": flax.__version__,
                "optax": optax.__version__,
                "jax_devices": [str(d) for d in jax.devices()],
                # A context-manager flag: jax.config.read refuses it, and the stubs lack it.
                "jax_default_matmul_precision": str(
                    getattr(jax.config, "jax_default_matmul_precision")  # noqa: B009
                ),
            }
        )
        if device == "xpu":
            info["note"] = "JAX has no Intel GPU backend; its rows ran on the CPU"
    return info


def matmul_seconds(
    shapes: Sequence[tuple[int, int, int]],
    device: str,
    dtype: str,
    repeats: int,
    loops: int,
    library: str = "torch",
) -> list[float] | None:
    """Best-of-``repeats`` seconds of one (m, k) @ (k, n) torch product for each ``(m, k, n)``
    in ``shapes`` (each timed over ``loops`` back-to-back calls, the device synchronised around
    them); None without torch. ``library="onednn"``: each through torch's oneDNN matmul (None
    where this torch or device has none: ``_torch_products``). ``library="jax"``: each product
    one jitted JAX dot on JAX's device for ``device`` (its CPU for an XPU); None without JAX."""
    if library == "jax":
        return _jax_matmul_seconds(shapes, device, dtype, repeats, loops)
    made = _torch_products(shapes, device, dtype, library)
    if made is None:
        return None
    products, sync = made
    seconds = []
    for product in products:
        for _ in range(2):
            product()
        best = float("inf")
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(loops):
                product()
            sync()
            best = min(best, (time.perf_counter() - t0) / loops)
        seconds.append(best)
    return seconds


def gemm_only_epoch(
    config: VAEConfig, batch_size: int, steps: int, device: str, dtype: str = "float32"
) -> Callable[[int], None] | None:
    """``run_epoch(epoch)`` of a step that is nothing but the MLP's matrix products: ``steps``
    times every product of ``gemm_shapes`` in turn (torch, each on contiguous operands of its
    own), the device synchronised at the end; None for a conv model or without torch. Timed
    like a row, it is the GEMM-only ceiling (``vae_tools.bench.run``)."""
    if config.arch != "mlp":
        return None
    made = _torch_products(gemm_shapes(config, batch_size), device, dtype, "torch")
    if made is None:
        return None
    products, sync = made

    def run_epoch(epoch: int) -> None:
        for _ in range(steps):
            for product in products:
                product()
        sync()

    return run_epoch


def _torch_products(
    shapes: Sequence[tuple[int, int, int]], device: str, dtype: str, library: str
) -> tuple[list[Callable[[], Any]], Callable[[], None]] | None:
    """One zero-argument product per ``(m, k, n)`` (random operands of their own) and the
    device's synchronisation, in torch: ``a @ b`` (``library="torch"``: torch's BLAS, MKL on
    x86 CPUs) or ``library="onednn"``: oneDNN's matmul, through the
    ``torch.ops.mkldnn._linear_pointwise`` op that inductor itself runs CPU linear layers with
    (a private op, hence the checks: None off the CPU, for float64, or where this torch build
    lacks it). None without torch."""
    try:
        import torch

        from vae_torch.device import select_device, synchronize
        from vae_torch.model import resolve_dtype
    except ImportError:
        return None
    dev = select_device(device)
    dt = resolve_dtype(dtype)
    products: list[Callable[[], Any]] = []
    if library == "onednn":
        linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
        if dev.type != "cpu" or dt != torch.float32 or linear is None:
            return None
        if not torch.backends.mkldnn.is_available():
            return None
        for m, k, n in shapes:
            a = torch.randn(m, k, device=dev, dtype=dt)
            w = torch.randn(n, k, device=dev, dtype=dt)  # a @ w.T, as a linear layer computes
            products.append(functools.partial(linear, a, w, None, "none", [], ""))
    elif library == "torch":
        for m, k, n in shapes:
            a = torch.randn(m, k, device=dev, dtype=dt)
            b = torch.randn(k, n, device=dev, dtype=dt)
            products.append(functools.partial(torch.mm, a, b))
    else:
        raise ConfigError(f"unknown GEMM library {library!r}; choose torch, onednn or jax")
    return products, lambda: synchronize(dev)


def _jax_matmul_seconds(
    shapes: Sequence[tuple[int, int, int]], device: str, dtype: str, repeats: int, loops: int
) -> list[float] | None:
    try:
        import jax
        import jax.numpy as jnp

        from vae_jax.device import select_device
    except ImportError:
        return None
    dev = select_device("cpu" if device == "xpu" else device)
    dot = jax.jit(jnp.matmul)
    seconds = []
    for m, k, n in shapes:
        a = jax.device_put(jnp.ones((m, k), dtype), dev)
        b = jax.device_put(jnp.ones((k, n), dtype), dev)
        for _ in range(2):
            dot(a, b).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(loops):
                out = dot(a, b)
            out.block_until_ready()
            best = min(best, (time.perf_counter() - t0) / loops)
        seconds.append(best)
    return seconds


def matmul_peak_gflops(device: str, dtype: str = "float32", size: int = 2048) -> float | None:
    """Measured dense (size x size) matmul throughput in GFLOP/s (torch, best of 5), the
    ceiling for achieved GFLOP/s; None without torch."""
    seconds = matmul_seconds([(size, size, size)], device, dtype, repeats=5, loops=1)
    return None if seconds is None else 2 * size**3 / seconds[0] / 1e9


def gemm_shapes(config: VAEConfig, batch_size: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) of every matrix product of one MLP training step: per dense layer the
    forward product, the input gradient (except for the first layer) and the weight gradient."""
    shapes = []
    layers = [s.shape for s in param_spec(config) if s.kind == "linear_weight"]
    for i, (out_f, in_f) in enumerate(layers):
        shapes.append((batch_size, in_f, out_f))  # x @ W.T
        if i > 0:
            shapes.append((batch_size, out_f, in_f))  # grad_y @ W
        shapes.append((out_f, batch_size, in_f))  # grad_y.T @ x
    return shapes


def gemm_ceiling(
    config: VAEConfig,
    batch_size: int,
    device: str,
    dtype: str = "float32",
    repeats: int = 7,
    library: str = "torch",
) -> float | None:
    """Samples/s if a training step cost nothing but its matrix products (MLP only, else None):
    every product of ``gemm_shapes`` timed on its own in ``library`` (torch, ``"onednn"``:
    torch's oneDNN matmul, or ``"jax"``: XLA's dots), best of ``repeats`` loops, summed.

    A contender whose products run no faster than they do alone cannot beat it; with Adam and
    the elementwise work on top, it tells what ratio to the reference this machine allows.
    """
    if config.arch != "mlp":
        return None
    shapes = gemm_shapes(config, batch_size)
    seconds = matmul_seconds(shapes, device, dtype, repeats, loops=20, library=library)
    return None if seconds is None else batch_size / sum(seconds)


def adam_floor_seconds(
    config: VAEConfig, device: str, dtype: str = "float32", repeats: int = 7, loops: int = 50
) -> float | None:
    """Seconds of one ``torch.optim.Adam`` update over parameters of the model's shapes (its
    fused kernel where this torch build has one for the device, else the foreach one), best of
    ``repeats`` loops of ``loops`` back-to-back steps, the device synchronised around them; None
    without torch. Independent of the batch size."""
    try:
        import torch

        from vae_torch.device import select_device, synchronize
        from vae_torch.model import resolve_dtype
    except ImportError:
        return None
    dev = select_device(device)
    dt = resolve_dtype(dtype)
    params = [torch.zeros(s.shape, device=dev, dtype=dt) for s in param_spec(config)]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    try:
        optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
        optimizer.step()
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        optimizer = torch.optim.Adam(params, lr=1e-3, foreach=True)
        optimizer.step()
    best = float("inf")
    for _ in range(repeats):
        synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(loops):
            optimizer.step()
        synchronize(dev)
        best = min(best, (time.perf_counter() - t0) / loops)
    return best
