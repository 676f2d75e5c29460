"""The files a data-parallel parity run hands to its worker processes and back: the problem
and the results, each one .npz without pickles."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.training import TrainConfig
from vae_tools.parity_dp_train import PATHS, Problem


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


__all__ = ["load_problem", "load_result", "save_problem", "save_result"]
