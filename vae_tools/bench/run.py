"""``run_bench``: every chosen contender on every batch size, timed together, as records; with
``devices`` also the data-parallel rows (``vae_tools.bench.data_parallel``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.constants import BENCH_UNTIMED_STEPS
from vae_common.distributed import usable_cores
from vae_common.errors import ConfigError
from vae_common.precision import precision_note
from vae_common.training import TrainConfig
from vae_tools.bench import data_parallel as dp
from vae_tools.bench.contenders import MODES, make_contender
from vae_tools.bench.host import (
    adam_floor_seconds,
    gemm_ceiling,
    gemm_only_epoch,
    host_info,
    matmul_peak_gflops,
)
from vae_tools.bench.timing import measure_interleaved
from vae_tools.bench.workload import Workload, default_config, flops_per_sample, make_data

# Contenders run (and are listed) in this order, the reference first.
ORDER = ("reference", "jax", "torch")


def choose(
    backends: Sequence[str], modes: Mapping[str, Sequence[str]] | None, device: str
) -> list[tuple[str, str]]:
    """The (backend, mode) pairs to run. Without ``modes`` every mode of ``MODES`` is chosen,
    except the CUDA-graph mode off CUDA; a mode asked for by name is always chosen (and fails
    there if the device cannot run it)."""
    unknown = [b for b in backends if b not in MODES]
    if unknown:
        raise ConfigError(f"unknown backends {unknown}; choose from {list(MODES)}")
    if modes is None:
        modes = {
            b: [m for m in MODES[b] if not (m == "cudagraph" and device != "cuda")] for b in MODES
        }
    chosen = [(b, m) for b in ORDER if b in backends for m in modes.get(b, ())]
    bad = [f"{b}/{m}" for b, m in chosen if m not in MODES[b]]
    if bad:
        raise ConfigError(f"unknown modes {bad}; choose from {MODES}")
    if not chosen:
        raise ConfigError(f"no contender left for backends {list(backends)} and modes {modes}")
    return chosen


def _precision_fields(backend: str, w: Workload) -> dict[str, Any]:
    """``precision`` of a record (the reference row's is always float32) and
    ``precision_note``: what the precision did not do on the row's device (None: all of it)."""
    precision = "float32" if backend == "reference" else w.precision
    device = "cpu" if backend == "jax" and w.device == "xpu" else w.device
    return {"precision": precision, "precision_note": precision_note(precision, device)}


def _record(
    backend: str,
    mode: str,
    w: Workload,
    timing: dict[str, Any],
    untimed_epochs: int,
    repeats: int,
    flops: float,
) -> dict[str, Any]:
    samples = w.steps * w.batch_size
    per_s = samples / timing["median_s"]
    return {
        "backend": backend,
        "mode": mode,
        "arch": w.config.arch,
        "device": "cpu" if backend == "jax" and w.device == "xpu" else w.device,
        "dtype": w.dtype,
        **_precision_fields(backend, w),
        "batch_size": w.batch_size,
        "samples_per_s": per_s,
        "steps_per_s": w.steps / timing["median_s"],
        "compile_s": timing["compile_s"],
        "repeats": repeats,
        "spread": timing["spread"],
        "median_epoch_s": timing["median_s"],
        "first_epoch_s": timing["first_epoch_s"],
        "untimed_steps": untimed_epochs * w.steps,
        "untimed_s": timing["untimed_s"],
        "samples_per_epoch": samples,
        "gflops": per_s * flops / 1e9,
        "flush_denormal": backend == "torch" and w.device == "cpu",
    }


def _add_dp_fields(
    rec: dict[str, Any],
    mode: str,
    n: int,
    single: tuple[dict[str, Any], float | None],
    last_loss: float | None,
    interleaved: bool,
    how: Mapping[str, Any],
) -> dict[str, Any]:
    """``rec`` (an N-device row's ``_record``) with the data-parallel fields, against the
    1-device row ``single`` (its record and its last epoch's mean loss) of the same mode."""
    base, base_loss = single
    rec.update(
        devices=n,
        per_device_batch=rec["batch_size"] // n,
        single_device_mode=mode,
        single_device_samples_per_s=base["samples_per_s"],
        efficiency=rec["samples_per_s"] / (n * base["samples_per_s"]),
        interleaved=interleaved,
        launch=how["launch"],
        processes=how["processes"],
        threads_per_process=how["threads_per_process"],
        host_cores=usable_cores() if rec["device"] == "cpu" else None,
        last_epoch_mean_loss=last_loss,
        single_device_last_epoch_mean_loss=base_loss,
    )
    return rec


def run_bench(
    backends: Sequence[str] = ("jax", "torch", "reference"),
    arch: str = "mlp",
    device: str = "cpu",
    batch_sizes: Sequence[int] = (128,),
    dtype: str = "float32",
    samples: int = 60000,
    repeats: int = 5,
    untimed_steps: int = BENCH_UNTIMED_STEPS,
    modes: Mapping[str, Sequence[str]] | None = None,
    data: np.ndarray | None = None,
    config: VAEConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    devices: int | None = None,
    precision: str = "float32",
) -> dict[str, Any]:
    """Time every chosen contender (``choose``) for every batch size.

    Each contender first trains at least ``untimed_steps`` steps untimed (whole epochs, at least
    one), then ``repeats`` interleaved timed epochs (``timing.measure_interleaved``).

    Args:
      data: (N, C, H, W) images; default ``make_data(config, samples, seed)``.
      config: the model; default ``default_config(arch)``.
      devices: N >= 2 adds, for every chosen mode of ``contenders.DP_MODES``, a row
        ``<mode>-dpN`` timing ``Trainer(devices=N).train_epoch`` on the same workload (global
        batch = the batch size, split over N), with the same untimed steps and repeats; checked
        (``data_parallel.check_devices``) before any work.
      precision: the library rows' training precision (``vae_common.precision``); each record
        holds its ``precision`` and a ``precision_note`` when the device has no such mode (tf32
        off NVIDIA GPUs runs as float32).

    Returns:
      ``{"records": [one dict per contender and batch size], "host": {...}}``; every record's
      ``ratio_to_reference`` is its samples/s over the reference row's of the same batch size
      (None without one), and each ``*_fraction`` of ``CEILINGS`` its samples/s over that
      ceiling of its batch size (``vae_tools.bench.host``; None for a conv model or a ceiling
      not measured): ``ceiling_fraction`` is of the GEMM-only epoch timed in the same
      interleaved rounds as the rows. The host holds each ceiling of ``CEILINGS``
      (``{str(batch): samples/s}`` or None) and ``adam_floor_s``. A data-parallel record
      also has ``devices``, ``per_device_batch``,
      ``single_device_mode``, ``single_device_samples_per_s``, ``efficiency`` (its samples/s
      over N x the 1-device row's), ``interleaved`` (with the 1-device rows), ``launch``,
      ``processes``, ``threads_per_process`` (None: JAX's own pool), ``host_cores`` (the cores
      all N devices or ranks shared, on the CPU) and ``last_epoch_mean_loss`` (of both rows:
      ``single_device_last_epoch_mean_loss``, the same training up to rounding).
    """
    if repeats < 1 or untimed_steps < 0:
        raise ConfigError(
            f"need repeats >= 1 and untimed_steps >= 0, got {repeats}, {untimed_steps}"
        )
    chosen = choose(backends, modes, device)
    pairs = [] if devices is None else dp.check_devices(devices, chosen, device, batch_sizes)
    n = 0 if devices is None else int(devices)
    config = config or default_config(arch)
    data = make_data(config, samples, seed) if data is None else data
    uses_torch = any(b in ("torch", "reference") for b, _ in chosen)
    uses_jax = any(b == "jax" for b, _ in chosen)
    if dtype == "float64" and any(b == "jax" for b, _ in chosen):
        from vae_jax.device import enable_float64

        enable_float64()
    if uses_torch:
        import torch

        # Plain float32 products in every torch row, as in JAX's default on the CPU.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    flops = flops_per_sample(config)
    train = TrainConfig(lr=1e-3)
    # The JAX data-parallel rows that can run here, interleaved with the 1-device rows (JAX
    # already has the N devices: GPUs, or CPU devices forced before it started).
    here = [(b, m) for b, m in pairs if b == "jax" and dp.jax_in_process(n, device)]
    in_process = {"launch": "in this process", "processes": 1, "threads_per_process": None}
    records = []
    gemm_only: dict[str, float | None] = {}
    for batch_size in batch_sizes:
        w = Workload(config, data, batch_size, dtype, device, seed, train, precision=precision)
        untimed_epochs = max(1, -(-untimed_steps // w.steps))
        log(
            f"  batch {batch_size}: {len(chosen + here)} contenders, {untimed_epochs} untimed "
            f"epoch(s) each, then {repeats} interleaved timed rounds"
        )
        wdp = dataclasses.replace(w, devices=n) if n else w
        epochs = [dp.LastLosses(make_contender(b, m, w)) for b, m in chosen]
        epochs += [dp.LastLosses(make_contender(b, m, wdp)) for b, m in here]
        # The GEMM-only ceiling runs in the same rounds, after the rows (not a row itself).
        products = (
            gemm_only_epoch(config, batch_size, w.steps, device, dtype) if uses_torch else None
        )
        rounds: list[Callable[[int], Any]] = [*epochs]
        if products is not None:
            rounds.append(products)
        timings = measure_interleaved(rounds, untimed_epochs, repeats)
        if products is not None:
            gemm_only[str(batch_size)] = w.steps * batch_size / timings.pop()["median_s"]
        losses = [e.mean for e in epochs]
        del epochs, rounds, products  # free this batch size's trainers and data before the next
        rows = [
            _record(b, m, w, t, untimed_epochs, repeats, flops)
            for (b, m), t in zip(chosen, timings, strict=False)
        ]
        single = {pair: (r, loss) for pair, r, loss in zip(chosen, rows, losses, strict=False)}
        for k, (b, m) in enumerate(here, start=len(chosen)):
            rec = _record(b, dp.dp_mode(m, n), wdp, timings[k], untimed_epochs, repeats, flops)
            rows.append(_add_dp_fields(rec, m, n, single[b, m], losses[k], True, in_process))
        for backend in ("jax", "torch"):
            away = tuple(m for b, m in pairs if b == backend and (b, m) not in here)
            if not away:
                continue
            log(
                f"  batch {batch_size}: {backend} {', '.join(away)} on {n} devices in "
                "other processes (not interleaved with the rows above)"
            )
            out = dp.run_elsewhere(dp.Job(backend, away, wdp, untimed_epochs, repeats))
            for m in away:
                t, loss = out["timings"][m], out["last_epoch_mean_loss"][m]
                rec = _record(backend, dp.dp_mode(m, n), wdp, t, untimed_epochs, repeats, flops)
                rows.append(_add_dp_fields(rec, m, n, single[backend, m], loss, False, out))
        ref = next((r["samples_per_s"] for r in rows if r["backend"] == "reference"), None)
        for r in rows:
            r["ratio_to_reference"] = r["samples_per_s"] / ref if ref else None
        records.extend(rows)
    host = host_info(device)
    host["usable_cores"] = usable_cores()
    host["flops_per_sample"] = flops
    host["peak_gflops"] = matmul_peak_gflops(device, dtype) if uses_torch else None
    host.update(_ceilings(config, batch_sizes, device, dtype, uses_torch, uses_jax, gemm_only))
    for r in records:
        r.update(_fractions(r, host))
    host["config"] = config.to_dict()
    return {"records": records, "host": host}


# The host's ceilings (``vae_tools.bench.host``) and the record field of each one's fraction.
CEILINGS = {
    "gemm_ceiling_samples_per_s": "ceiling_fraction",
    "gemm_best_of_samples_per_s": "gemm_best_of_fraction",
    "gemm_adam_ceiling_samples_per_s": "gemm_adam_ceiling_fraction",
    "onednn_gemm_ceiling_samples_per_s": "onednn_gemm_ceiling_fraction",
    "xla_gemm_ceiling_samples_per_s": "xla_gemm_ceiling_fraction",
}


def _ceilings(
    config: VAEConfig,
    batch_sizes: Sequence[int],
    device: str,
    dtype: str,
    uses_torch: bool,
    uses_jax: bool,
    gemm_only: Mapping[str, float | None],
) -> dict[str, Any]:
    """The ceilings per batch size (``{str(batch): samples/s}``, None where not measured: the
    torch ones without a torch row, XLA's without a JAX row, oneDNN's where torch has none for
    the device and dtype) and the Adam floor. ``gemm_only``: the GEMM-only epochs' samples/s,
    timed in the rows' rounds (``gemm_ceiling_samples_per_s``, the one ``ceiling_fraction``
    is of); the best-of-loops products are ``gemm_best_of_samples_per_s``. The ceiling with
    Adam adds the floor to the seconds of the GEMM-only ceiling's step (not a second timing),
    so it is always the lower of the two."""

    def per_batch(library: str) -> dict[str, float | None] | None:
        rates = {
            str(b): gemm_ceiling(config, b, device, dtype, library=library) for b in batch_sizes
        }
        return None if all(r is None for r in rates.values()) else rates

    torch_gemm = dict(gemm_only) if uses_torch and gemm_only else None
    adam_s = adam_floor_seconds(config, device, dtype) if uses_torch else None
    with_adam = None
    if torch_gemm is not None and adam_s is not None:
        with_adam = {
            b: None if rate is None else int(b) / (int(b) / rate + adam_s)
            for b, rate in torch_gemm.items()
        }
    return {
        "gemm_ceiling_samples_per_s": torch_gemm,
        "gemm_best_of_samples_per_s": per_batch("torch") if uses_torch else None,
        "adam_floor_s": adam_s,
        "gemm_adam_ceiling_samples_per_s": with_adam,
        "onednn_gemm_ceiling_samples_per_s": per_batch("onednn") if uses_torch else None,
        "xla_gemm_ceiling_samples_per_s": per_batch("jax") if uses_jax else None,
    }


def _fractions(record: dict[str, Any], host: dict[str, Any]) -> dict[str, float | None]:
    """``record``'s samples/s over each ceiling of its batch size (None where there is none:
    a conv model, a ceiling not measured)."""
    out: dict[str, float | None] = {}
    for key, field in CEILINGS.items():
        ceiling = (host.get(key) or {}).get(str(record["batch_size"]))
        out[field] = record["samples_per_s"] / ceiling if ceiling else None
    return out
