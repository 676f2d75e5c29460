"""Data-parallel parity: N devices against one, in each backend, and JAX against torch.

One problem (weights, 10 batches and their noise, a small dataset with its epoch of batch
indices) trains from the same start on 1 and on N devices with each backend, through the
``Trainer``'s two paths: ``run_steps`` (given batches and noise, comparable across backends) and
``train_epoch`` (batches gathered by index, noise and dynamic binarization drawn from the seed,
comparable within a backend). Every per-step loss and every final parameter is compared by name.

The N-device runs happen where N devices exist: JAX in this process when it already has N
devices of the platform, else in a subprocess with N forced host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set before JAX starts);
torch always in N processes started by ``torchrun`` (gloo on the CPU, nccl on CUDA).
``python -m vae_tools.parity_dp worker ...`` is the entry point of those processes.

The 1-device torch reference runs with the ranks' intra-op thread count (``rank_threads``): on
the CPU the thread count alone changes how the matrix products are blocked, and Adam amplifies
that rounding in near-zero gradients, so a 1-thread and a 2-thread run of the same 1-device
training differ after 10 steps as much as the tolerance (figures in the README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.compare import TOLERANCES, TRAJECTORY_TOLERANCES, max_abs_diff, rel_diff
from vae_common.config import VAEConfig
from vae_common.distributed import free_port, threads_per_process
from vae_common.errors import DeviceError, UsageError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig

PATHS = ("run_steps", "train_epoch")
# Seconds allowed for one N-device run (start-up, compilation, 2 x steps).
RUN_TIMEOUT_S = 900


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


def train_data_parallel(
    backend: str,
    n: int,
    problem: Problem,
    dtype: str,
    device: str | None = "cpu",
    compile: bool = False,
) -> dict[str, dict[str, Any]]:
    """``train_both_paths`` on ``n`` devices: here when this process already has them (JAX),
    otherwise in ``n`` processes (torch, through torchrun) or one process with ``n`` forced CPU
    devices (JAX). Returns rank 0's results."""
    if backend == "jax" and _jax_has(n, jax_device(device)):
        return train_both_paths("jax", problem, dtype, n, jax_device(device), compile)
    with tempfile.TemporaryDirectory(prefix="vae-parity-dp-") as tmp:
        problem_path, result_path = Path(tmp) / "problem.npz", Path(tmp) / "result.npz"
        save_problem(problem, problem_path)
        worker = [
            "-m",
            "vae_tools.parity_dp",
            "worker",
            "--backend",
            backend,
            "--devices",
            str(n),
            "--dtype",
            dtype,
            "--problem",
            str(problem_path),
            "--out",
            str(result_path),
        ]
        worker += ["--device", str(device)] if device else []
        worker += ["--compile"] if compile else []
        env = dict(os.environ)
        if backend == "jax":
            if jax_device(device) not in (None, "cpu"):
                raise DeviceError(f"JAX has fewer than {n} {jax_device(device)} devices here")
            flags = env.get("XLA_FLAGS", "")
            env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
            env["JAX_PLATFORMS"] = "cpu"
            cmd = [sys.executable, *worker]
        else:
            env["OMP_NUM_THREADS"] = str(rank_threads(n))
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "1",
                "--nproc-per-node",
                str(n),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(free_port()),
                *worker,
            ]
        try:
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(
                f"the {n}-device {backend} run did not finish within {RUN_TIMEOUT_S} s"
            ) from exc
        if done.returncode != 0 or not result_path.exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise DeviceError(
                f"the {n}-device {backend} run failed (exit status {done.returncode}):\n{tail}"
            )
        return load_result(result_path)


def rank_threads(n: int) -> int:
    """Intra-op threads of each rank of an ``n``-process torch run started here:
    ``$OMP_NUM_THREADS`` when set, else ``max(1, cores // n)``."""
    text = os.environ.get("OMP_NUM_THREADS", "")
    return int(text) if text.isdigit() and int(text) > 0 else threads_per_process(n)


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


def _jax_has(n: int, platform: str | None) -> bool:
    import jax

    from vae_jax.device import select_device

    kind = select_device(platform).platform
    return len(jax.devices(kind)) >= n


def compare_runs(
    a: dict[str, Any], b: dict[str, Any], dtype: str, tolerance: float, judge_params: bool
) -> dict[str, Any]:
    """``a`` against the reference ``b`` (each ``{"losses", "params"}``): the largest relative
    difference over the per-step losses and over each parameter (``vae_common.compare``).
    ``judge_params`` False judges the loss curve only (float32; see
    ``vae_common.compare.TRAJECTORY_TOLERANCES``)."""
    curve = max(rel_diff(x, y) for x, y in zip(a["losses"], b["losses"], strict=True))
    params = {
        n: {
            "max_abs_diff": max_abs_diff(a["params"][n], p),
            "max_rel_diff": rel_diff(a["params"][n], p),
        }
        for n, p in b["params"].items()
    }
    worst_param = max(p["max_rel_diff"] for p in params.values())
    judged = max(curve, worst_param) if judge_params else curve
    return {
        "loss_curve": {
            "a": [float(v) for v in a["losses"]],
            "b": [float(v) for v in b["losses"]],
            "max_rel_diff": curve,
        },
        "params": params,
        "judged": "params, loss curve" if judge_params else "loss curve",
        "max_rel_diff": judged,
        "tolerance": tolerance,
        "passed": bool(judged <= tolerance),
    }


def check_data_parallel(
    config: VAEConfig,
    n: int = 2,
    dtype: str = "float64",
    steps: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 1e-3,
    beta: float = 1.0,
    state: dict[str, np.ndarray] | None = None,
    device: str | None = "cpu",
    compile: bool = False,
) -> dict[str, Any]:
    """The N-device vs 1-device check in each backend and JAX vs torch.

    Returns ``{"dtype", "devices", "steps", "batch_size", "jax": {path: comparison},
    "torch": {path: comparison}, "jax_vs_torch": {"1": comparison, "N": comparison},
    "max_rel_diff", "tolerance", "passed"}``; each comparison is ``compare_runs``'s dict (``a``
    the N-device or JAX run, ``b`` the reference). Within a backend the tolerance is
    ``TOLERANCES[dtype]``; across backends (different kernels for 10 Adam steps) the trajectory
    tolerance. The top level holds the worst figure, the largest tolerance and whether every
    comparison passed its own.
    """
    if n < 2:
        raise UsageError(f"--data-parallel needs at least 2 devices, got {n}")
    if batch_size % n:
        raise UsageError(f"batch size {batch_size} does not split over {n} devices")
    problem = make_problem(config, steps, batch_size, seed, lr, beta, state)
    judge_params = dtype in TRAJECTORY_TOLERANCES
    within = TOLERANCES[dtype]
    across = TRAJECTORY_TOLERANCES.get(dtype, TOLERANCES[dtype])
    runs: dict[str, dict[str, Any]] = {}
    for backend in ("jax", "torch"):
        here = jax_device(device) if backend == "jax" else device
        threads = torch_threads(rank_threads(n)) if backend == "torch" else contextlib.nullcontext()
        with threads:
            single = train_both_paths(backend, problem, dtype, None, here, compile)
        multi = train_data_parallel(backend, n, problem, dtype, device, compile)
        runs[backend] = {"1": single, "N": multi}
    report: dict[str, Any] = {"dtype": dtype, "devices": n, "steps": steps}
    report["batch_size"] = batch_size
    for backend in ("jax", "torch"):
        report[backend] = {
            path: compare_runs(
                runs[backend]["N"][path], runs[backend]["1"][path], dtype, within, judge_params
            )
            for path in PATHS
        }
    report["jax_vs_torch"] = {
        k: compare_runs(
            runs["jax"][k]["run_steps"], runs["torch"][k]["run_steps"], dtype, across, judge_params
        )
        for k in ("1", "N")
    }
    comparisons = [c for b in ("jax", "torch") for c in report[b].values()]
    comparisons += list(report["jax_vs_torch"].values())
    report["max_rel_diff"] = max(c["max_rel_diff"] for c in comparisons)
    report["tolerance"] = max(c["tolerance"] for c in comparisons)
    report["passed"] = all(c["passed"] for c in comparisons)
    return report


def format_table(report: dict[str, Any]) -> str:
    """One line per comparison: what was compared, the figure, the tolerance, the verdict."""
    n = report["devices"]
    rows = [("comparison", "max rel diff", "tolerance", "")]
    for backend in ("jax", "torch"):
        for path, c in report[backend].items():
            rows.append((f"{backend} {path}: {n} devices vs 1", *_cells(c)))
    for k, c in report["jax_vs_torch"].items():
        rows.append((f"jax vs torch run_steps, {n if k == 'N' else 1} device(s)", *_cells(c)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>12}  {r[2]:>9}  {r[3]}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines.append(f"{report['dtype']}, {report['steps']} steps: {verdict}")
    return "\n".join(lines)


def _cells(c: dict[str, Any]) -> tuple[str, str, str]:
    return f"{c['max_rel_diff']:.3e}", f"{c['tolerance']:.0e}", "ok" if c["passed"] else "FAILED"


def save_problem(problem: Problem, path: Path) -> None:
    """``problem`` as one .npz (no pickles): arrays, and the settings as JSON text."""
    meta = {
        "config": problem.config.to_json(),
        "train": problem.train.to_json(),
        "epoch_train": problem.epoch_train.to_json(),
        "seed": problem.seed,
        "epoch": problem.epoch,
    }
    arrays: dict[str, np.ndarray] = {f"state/{k}": v for k, v in problem.state.items()}
    arrays.update(
        meta=np.asarray(json.dumps(meta)),
        xs=problem.xs,
        eps=problem.eps,
        data=problem.data,
        batches=problem.batches,
    )
    np.savez(path, allow_pickle=False, **arrays)


def load_problem(path: Path) -> Problem:
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        state = {k.removeprefix("state/"): f[k] for k in f.files if k.startswith("state/")}
        return Problem(
            VAEConfig.from_json(meta["config"]),
            TrainConfig.from_json(meta["train"]),
            TrainConfig.from_json(meta["epoch_train"]),
            state,
            f["xs"],
            f["eps"],
            f["data"],
            f["batches"],
            int(meta["seed"]),
            int(meta["epoch"]),
        )


def save_result(result: dict[str, dict[str, Any]], path: Path) -> None:
    arrays = {}
    for p, r in result.items():
        arrays[f"{p}/losses"] = r["losses"]
        arrays.update({f"{p}/params/{k}": v for k, v in r["params"].items()})
    # Written under a temporary name and renamed: the parent never reads a partial file.
    tmp = path.with_name(path.name + ".part.npz")
    np.savez(tmp, allow_pickle=False, **arrays)
    os.replace(tmp, path)


def load_result(path: Path) -> dict[str, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as f:
        out: dict[str, dict[str, Any]] = {}
        for p in PATHS:
            prefix = f"{p}/params/"
            out[p] = {
                "losses": f[f"{p}/losses"],
                "params": {k.removeprefix(prefix): f[k] for k in f.files if k.startswith(prefix)},
            }
        return out


def worker(argv: list[str] | None = None) -> int:
    """One process of an N-device run: JAX (the N devices are this process's) or one torch
    rank (the process group comes from torchrun's environment). Rank 0 writes the results."""
    p = argparse.ArgumentParser(prog="python -m vae_tools.parity_dp worker")
    p.add_argument("--backend", choices=("jax", "torch"), required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--device", default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--problem", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    problem = load_problem(Path(args.problem))
    if args.backend == "jax":
        result = train_both_paths(
            "jax", problem, args.dtype, args.devices, jax_device(args.device), args.compile
        )
        save_result(result, Path(args.out))
        return 0
    from vae_torch import distributed

    distributed.initialize(device=args.device, timeout_s=120)
    try:
        result = train_both_paths(
            "torch", problem, args.dtype, args.devices, args.device, args.compile
        )
        if distributed.process_index() == 0:
            save_result(result, Path(args.out))
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m vae_tools.parity_dp worker --backend ... (see vae parity)")
    status = worker(sys.argv[2:])
    # The result is written and the process group is gone: skip the interpreter's teardown, where
    # a C++ worker thread (gloo's, inductor's) still joinable when static objects are destroyed
    # aborts the process now and then ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
