"""``vae bench``: a fair training-speed comparison of the backends on one machine.

Method, the same for every contender:
- the same data (N images) resident on the device, the same model, batch size, dtype, Adam;
- warm-up epochs first (compilation included): the first call's excess over a steady epoch is
  reported as ``compile_s``; warm-up runs past ~800 steps so that PyTorch's slowdown from
  denormal Adam moments (CPU) has set in before timing;
- ``repeats`` timed epochs, the device synchronised before every clock read; the median is
  reported with the spread ``(max - min) / median``;
- the timed epochs are interleaved: round r times epoch r of every contender in turn, so a slow
  spell of a shared host (other jobs, frequency changes) lands on all contenders alike instead
  of on whichever happened to run then; the ratios are what this protects;
- every figure is also a ratio to the reference row measured in the same run: the canonical
  eager PyTorch loop (DataLoader with shuffling, sigmoid + BCE summed, default Adam,
  ``loss.item()`` every step, flush-to-zero off).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_common.config import CONV_KERNEL, VAEConfig
from vae_common.spec import init_canonical, param_spec
from vae_common.training import TrainConfig

MODES = {
    "jax": ("step", "epoch"),
    "torch": ("eager", "compile", "cudagraph"),
    "reference": ("eager",),
}
WARMUP_STEPS = 900


@dataclass
class Contender:
    backend: str
    mode: str
    run_epoch: Callable[[int], None]  # runs one epoch (with device sync)
    flush_denormal: bool | None = None


def flops_per_sample(config: VAEConfig) -> float:
    """FLOPs (2 x multiply-adds) of one training sample: forward plus backward, where the
    backward costs two forward passes per layer except the first (no input gradient needed)."""
    _, h, w = config.input_shape
    total = 0
    for i, s in enumerate(x for x in param_spec(config) if x.kind != "bias"):
        if s.kind == "linear_weight":
            macs = s.shape[0] * s.shape[1]
        elif s.kind == "conv_weight":
            h, w = h // 2, w // 2
            macs = h * w * s.shape[0] * s.shape[1] * CONV_KERNEL**2
        else:  # transposed conv: every input pixel scatters a k x k patch to every output channel
            macs = h * w * s.shape[0] * s.shape[1] * CONV_KERNEL**2
            h, w = h * 2, w * 2
        total += macs * (2 if i == 0 else 3)
    return 2.0 * total


def _sync_torch(device):
    from vae_torch.device import synchronize

    synchronize(device)


def make_data(config: VAEConfig, samples: int, seed: int = 0) -> np.ndarray:
    """Synthetic images in [0, 1] with a zero 4-pixel border (where the image is large enough),
    like MNIST's: the weights of never-lit pixels get zero gradients, so Adam's moments decay
    into denormals as they do on real data."""
    rng = np.random.default_rng(seed)
    x = rng.random((samples,) + config.input_shape, dtype=np.float32)
    _, h, w = config.input_shape
    if h >= 16 and w >= 16:
        x[:, :, :4], x[:, :, -4:], x[:, :, :, :4], x[:, :, :, -4:] = 0, 0, 0, 0
    return x


def _jax_contender(mode, config, train, dtype, device, data_np, batches_fn, seed):
    import jax

    from vae_jax.train import Trainer, make_indexed_step

    # JAX has no Intel GPU backend: on an XPU machine its rows run on the CPU (said in the output).
    trainer = Trainer(config, train, dtype, device="gpu" if device == "cuda" else "cpu")
    trainer.load_state_dict(init_canonical(config, seed, dtype))
    data = trainer.put_data(data_np)
    if mode == "epoch":

        def run_epoch(epoch):
            losses = trainer.train_epoch(data, batches_fn(epoch), seed, epoch)
            assert np.isfinite(losses[-1])

        return run_epoch
    step = make_indexed_step(trainer.model, trainer.train_config)

    def run_epoch(epoch):
        key = jax.device_put(jax.random.fold_in(jax.random.key(seed), epoch), trainer.device)
        batches = batches_fn(epoch).astype(np.int32)
        state, losses = trainer.state, []
        for i, idx in enumerate(batches):
            state, loss = step(state, data, idx, key, np.int32(i))
            losses.append(loss)
        trainer.state = state
        jax.block_until_ready(losses)

    return run_epoch


def _torch_contender(mode, config, train, dtype, device, data_np, batches_fn, seed):

    from vae_torch.train import Trainer

    trainer = Trainer(config, train, dtype, device=device, compile=(mode == "compile"))
    trainer.load_state_dict(init_canonical(config, seed, dtype))
    data = trainer.put_data(data_np)
    if mode in ("eager", "compile"):

        def run_epoch(epoch):
            trainer.train_epoch(data, batches_fn(epoch), seed, epoch)
            _sync_torch(trainer.device)

        return run_epoch
    return _cudagraph_epoch(trainer, data, batches_fn, seed)


def _cudagraph_epoch(trainer, data, batches_fn, seed):
    """The whole step (forward, backward, Adam) captured once in a CUDA graph and replayed."""
    import torch

    from vae_torch.losses import objective

    if trainer.device.type != "cuda":
        raise ValueError("mode 'cudagraph' needs --device cuda")
    model, cfg = trainer.model, trainer.config
    batch = batches_fn(1).shape[1]
    opt = torch.optim.Adam(
        model.parameters(),
        lr=trainer.train_config.lr,
        betas=(trainer.train_config.b1, trainer.train_config.b2),
        eps=trainer.train_config.adam_eps,
        capturable=True,
    )
    static_idx = torch.zeros(batch, dtype=torch.long, device=trainer.device)
    static_eps = torch.zeros(batch, cfg.latent_dim, dtype=data.dtype, device=trainer.device)
    beta = trainer.train_config.beta

    def step():
        opt.zero_grad(set_to_none=False)
        loss = objective(model, None, data.index_select(0, static_idx), static_eps, beta)
        loss.backward()
        opt.step()
        return loss.detach()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()

    def run_epoch(epoch):
        gen = torch.Generator(device=trainer.device)
        gen.manual_seed(seed * 100003 + epoch)
        index = torch.as_tensor(batches_fn(epoch), device=trainer.device)
        losses = torch.empty(len(index), device=trainer.device)
        for i in range(len(index)):
            static_idx.copy_(index[i])
            torch.randn(static_eps.shape, generator=gen, out=static_eps)
            graph.replay()
            losses[i] = static_loss
        torch.cuda.synchronize()

    return run_epoch


def _reference_contender(config, train, dtype, device, data_np, batch_size, seed):
    """The canonical eager PyTorch loop, written the way tutorials write it."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from vae_torch.device import select_device
    from vae_torch.model import build_model

    dev = select_device(device)
    torch.manual_seed(seed)
    model = build_model(config, dtype).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
    data = torch.as_tensor(data_np, device=dev).to(next(model.parameters()).dtype)
    loader = DataLoader(TensorDataset(data), batch_size=batch_size, shuffle=True, drop_last=True)

    def run_epoch(epoch):
        torch.set_flush_denormal(False)
        model.train()
        total = 0.0
        for (x,) in loader:
            optimizer.zero_grad()
            mean, logvar = model.encode(x)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            recon = torch.sigmoid(model.decode(z))
            bce = F.binary_cross_entropy(recon, x, reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
            loss = bce + kld
            loss.backward()
            optimizer.step()
            total += loss.item()
        _sync_torch(dev)

    return run_epoch


def _summary(warm: list[float], times: list[float]) -> dict:
    median = statistics.median(times)
    return {
        "times_s": times,
        "median_s": median,
        "first_epoch_s": warm[0],
        "compile_s": max(0.0, warm[0] - median),
        "warmup_s": sum(warm),
        "spread": (max(times) - min(times)) / median,
    }


def _timed(run_epoch: Callable[[int], None], epoch: int) -> float:
    t0 = time.perf_counter()
    run_epoch(epoch)  # every contender synchronises its device before returning
    return time.perf_counter() - t0


def measure_interleaved(
    contenders: list[Callable[[int], None]], warmup_epochs: int, repeats: int
) -> list[dict]:
    """Time several contenders fairly: each warms up on its own (the first epoch includes
    compilation), then ``repeats`` rounds each time one epoch of every contender in turn."""
    warm = [[_timed(fn, e) for e in range(warmup_epochs)] for fn in contenders]
    times: list[list[float]] = [[] for _ in contenders]
    for r in range(repeats):
        for i, fn in enumerate(contenders):
            times[i].append(_timed(fn, warmup_epochs + r))
    return [_summary(w, t) for w, t in zip(warm, times, strict=True)]


def host_info(device: str) -> dict:
    info = {
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
    except ImportError:
        pass
    try:
        import flax
        import jax
        import optax

        info.update(
            {
                "jax": jax.__version__,
                "flax": flax.__version__,
                "optax": optax.__version__,
                "jax_devices": [str(d) for d in jax.devices()],
                "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            }
        )
        if device == "xpu":
            info["note"] = "JAX has no Intel GPU backend; its rows ran on the CPU"
    except ImportError:
        pass
    return info


def _matmul_seconds(shapes, device: str, dtype: str, repeats: int, loops: int) -> list | None:
    """Best-of-``repeats`` seconds of one (m, k) @ (k, n) torch product for each ``(m, k, n)``
    in ``shapes`` (each timed over ``loops`` back-to-back calls, the device synchronised around
    them); None without torch."""
    try:
        import torch

        from vae_torch.device import select_device
        from vae_torch.model import resolve_dtype
    except ImportError:
        return None
    dev = select_device(device)
    dt = resolve_dtype(dtype)
    seconds = []
    for m, k, n in shapes:
        a = torch.randn(m, k, device=dev, dtype=dt)
        b = torch.randn(k, n, device=dev, dtype=dt)
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            _sync_torch(dev)
            t0 = time.perf_counter()
            for _ in range(loops):
                a @ b
            _sync_torch(dev)
            best = min(best, (time.perf_counter() - t0) / loops)
        seconds.append(best)
    return seconds


def matmul_peak_gflops(device: str, dtype: str = "float32", size: int = 2048) -> float | None:
    """Measured dense matmul throughput (torch), the ceiling for achieved GFLOP/s."""
    seconds = _matmul_seconds([(size, size, size)], device, dtype, repeats=5, loops=1)
    return None if seconds is None else 2 * size**3 / seconds[0] / 1e9


def gemm_ceiling(
    config: VAEConfig, batch_size: int, device: str, dtype: str = "float32", repeats: int = 7
) -> float | None:
    """Samples/s if a training step cost nothing but its matrix products (MLP only): every GEMM
    of the forward and backward pass (per dense layer: forward, input gradient except for the
    first layer, weight gradient) timed on its own in torch, best of ``repeats`` loops, summed.

    A contender whose products run no faster than they do alone cannot beat it; with Adam and
    the elementwise work on top, it tells what ratio to the reference this machine allows.
    """
    if config.arch != "mlp":
        return None
    shapes = []  # (m, k, n) of an (m, k) @ (k, n) product
    layers = [s.shape for s in param_spec(config) if s.kind == "linear_weight"]
    for i, (out_f, in_f) in enumerate(layers):
        shapes.append((batch_size, in_f, out_f))  # x @ W.T
        if i > 0:
            shapes.append((batch_size, out_f, in_f))  # grad_y @ W
        shapes.append((out_f, batch_size, in_f))  # grad_y.T @ x
    seconds = _matmul_seconds(shapes, device, dtype, repeats, loops=20)
    return None if seconds is None else batch_size / sum(seconds)


def run_bench(
    backends=("jax", "torch", "reference"),
    arch: str = "mlp",
    device: str = "cpu",
    batch_sizes=(128,),
    dtype: str = "float32",
    samples: int = 60000,
    repeats: int = 5,
    warmup_steps: int = WARMUP_STEPS,
    modes: dict | None = None,
    data: np.ndarray | None = None,
    config: VAEConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every contender for every batch size; returns ``{"records": [...], "host": {...}}``."""
    if config is None:
        config = (
            VAEConfig(input_shape=(1, 28, 28), hidden=(400,), latent_dim=20)
            if arch == "mlp"
            else VAEConfig(
                input_shape=(1, 28, 28),
                hidden=(256,),
                latent_dim=20,
                arch="conv",
                conv_channels=(32, 64),
            )
        )
    if data is None:
        data = make_data(config, samples, seed)
    if dtype == "float64" and "jax" in backends:
        import jax

        jax.config.update("jax_enable_x64", True)
    if "torch" in backends or "reference" in backends:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    modes = modes or MODES
    train = TrainConfig(lr=1e-3)
    records = []
    flops = flops_per_sample(config)
    for batch_size in batch_sizes:
        steps = len(data) // batch_size
        if steps < 1:
            raise ValueError(f"batch size {batch_size} exceeds the {len(data)} samples")
        warmup_epochs = max(1, -(-warmup_steps // steps))
        from vae_common.data import batch_indices

        def batches_fn(epoch, _bs=batch_size):
            return batch_indices(len(data), _bs, seed, epoch)

        order = [b for b in ("reference", "jax", "torch") if b in backends]
        chosen = [
            (backend, mode)
            for backend in order
            for mode in modes.get(backend, ())
            if not (mode == "cudagraph" and device != "cuda")
        ]
        log(
            f"  batch {batch_size}: {len(chosen)} contenders, warm-up {warmup_epochs} epoch(s) "
            f"each, then {repeats} interleaved timed rounds"
        )
        epochs = []
        for backend, mode in chosen:
            if backend == "jax":
                fn = _jax_contender(mode, config, train, dtype, device, data, batches_fn, seed)
            elif backend == "torch":
                fn = _torch_contender(mode, config, train, dtype, device, data, batches_fn, seed)
            else:
                fn = _reference_contender(config, train, dtype, device, data, batch_size, seed)
            epochs.append(fn)
        for (backend, mode), timing in zip(
            chosen, measure_interleaved(epochs, warmup_epochs, repeats), strict=True
        ):
            per_s = steps * batch_size / timing["median_s"]
            records.append(
                {
                    "backend": backend,
                    "mode": mode,
                    "arch": config.arch,
                    "device": "cpu" if backend == "jax" and device == "xpu" else device,
                    "dtype": dtype,
                    "batch_size": batch_size,
                    "samples_per_s": per_s,
                    "steps_per_s": steps / timing["median_s"],
                    "compile_s": timing["compile_s"],
                    "repeats": repeats,
                    "spread": timing["spread"],
                    "median_epoch_s": timing["median_s"],
                    "first_epoch_s": timing["first_epoch_s"],
                    "warmup_s": timing["warmup_s"],
                    "samples_per_epoch": steps * batch_size,
                    "gflops": per_s * flops / 1e9,
                    "flush_denormal": backend == "torch" and device == "cpu",
                }
            )
        del epochs
        ref = [r for r in records if r["backend"] == "reference" and r["batch_size"] == batch_size]
        for r in records:
            if r["batch_size"] == batch_size:
                r["ratio_to_reference"] = (
                    r["samples_per_s"] / ref[0]["samples_per_s"] if ref else None
                )
    host = host_info(device)
    host["flops_per_sample"] = flops
    host["peak_gflops"] = (
        matmul_peak_gflops(device, dtype)
        if "torch" in backends or "reference" in backends
        else None
    )
    host["gemm_ceiling_samples_per_s"] = (
        {str(b): gemm_ceiling(config, b, device, dtype) for b in batch_sizes}
        if "torch" in backends or "reference" in backends
        else None
    )
    host["config"] = config.to_dict()
    return {"records": records, "host": host}


def format_table(result: dict) -> str:
    rows = [("backend", "mode", "batch", "samples/s", "x ref", "GFLOP/s", "compile s", "spread")]
    for r in result["records"]:
        ratio = r.get("ratio_to_reference")
        rows.append(
            (
                r["backend"],
                r["mode"],
                str(r["batch_size"]),
                f"{r['samples_per_s']:,.0f}",
                f"{ratio:.2f}" if ratio else "-",
                f"{r['gflops']:.1f}",
                f"{r['compile_s']:.2f}",
                f"{100 * r['spread']:.1f}%",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i > 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    h = result["host"]
    for batch, ceiling in (h.get("gemm_ceiling_samples_per_s") or {}).items():
        ref = next(
            (
                r["samples_per_s"]
                for r in result["records"]
                if r["backend"] == "reference" and str(r["batch_size"]) == batch
            ),
            None,
        )
        if ceiling:
            lines.append(
                f"GEMM-only ceiling, batch {batch}: {ceiling:,.0f} samples/s"
                + (f" = {ceiling / ref:.2f} x ref" if ref else "")
                + " (the step's matrix products alone, nothing else)"
            )
    peak = h.get("peak_gflops")
    lines.append(
        f"{h.get('processor')} x{h.get('cpu_count')}, device {h['device']}, torch "
        f"{h.get('torch')} ({h.get('torch_threads')} threads), jax {h.get('jax')}; "
        f"{h['flops_per_sample'] / 1e6:.2f} MFLOP per training sample"
        + (f"; measured matmul peak {peak:.0f} GFLOP/s" if peak else "")
    )
    return "\n".join(lines)


def save_plot(result: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["records"]
    labels = [f"{r['backend']}/{r['mode']}\nbatch {r['batch_size']}" for r in recs]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(recs)), 4))
    colors = {"jax": "tab:blue", "torch": "tab:orange", "reference": "tab:gray"}
    ax.bar(
        range(len(recs)),
        [r["samples_per_s"] for r in recs],
        color=[colors[r["backend"]] for r in recs],
    )
    for i, r in enumerate(recs):
        if r.get("ratio_to_reference"):
            ax.text(
                i,
                r["samples_per_s"],
                f"{r['ratio_to_reference']:.2f}x",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(range(len(recs)), labels, fontsize=7)
    ax.set_ylabel("training samples / s")
    h = result["host"]
    ax.set_title(
        f"{recs[0]['arch']} VAE, {recs[0]['dtype']}, {h['device']} "
        f"({h.get('gpu') or h.get('processor')})",
        fontsize=9,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_json(result: dict, path: str | Path) -> None:
    from vae_common.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(result, indent=2).encode())
