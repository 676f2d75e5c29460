"""What the run-directory tests share: a small digits slice, a short training call, and the
comparisons of two run directories and of a run directory with its manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import load_checkpoint, load_tensors
from vae_common.config import VAEConfig
from vae_common.data import Dataset, load_digits
from vae_common.training import TrainConfig
from vae_tools import run
from vae_tools.run_metrics import TIMING_KEYS
from vae_tools.run_state import RunSettings

CONFIG = VAEConfig(input_shape=(1, 8, 8), hidden=(32,), latent_dim=2)
TRAIN = TrainConfig(lr=3e-3)
SETTINGS = RunSettings("digits-small", batch_size=32, seed=0, dtype="float32")
STEPS_PER_EPOCH = 256 // 32


def small_digits() -> Dataset:
    """256 training and 64 test images of the bundled digits (8x8)."""
    ds = load_digits()
    return Dataset(
        "digits-small", ds.train[:256], ds.test[:64], ds.train_labels[:256], ds.test_labels[:64]
    )


def train_run(
    out: Path,
    dataset: Dataset,
    epochs: int,
    backend: str = "torch",
    *,
    config: VAEConfig = CONFIG,
    train: TrainConfig = TRAIN,
    settings: RunSettings = SETTINGS,
    resume: bool = False,
    overwrite: bool = False,
    plots: bool = False,
    **options,
) -> list[dict]:
    return run.train(
        out,
        backend,
        config,
        train,
        settings,
        epochs,
        resume=resume,
        overwrite=overwrite,
        device="cpu",
        dataset=dataset,
        progress=False,
        plots=plots,
        **options,
    )


def train_args(backend: str, dataset: str, out: Path, *extra: str, **options: Any) -> list[str]:
    """``vae train`` arguments: each option as its flag (``latent_dim=2`` -> ``--latent-dim 2``,
    ``quiet=True`` -> ``--quiet``), then ``--out`` and ``extra``."""
    argv = ["train", "--backend", backend, "--dataset", dataset]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return [*argv, "--out", str(out), *extra]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def file_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def without_seconds(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


def assert_same_run(got: Path, want: Path) -> None:
    """Bit-identical weights, Adam state and progress; the same metrics except wall time."""
    got_ckpt = load_checkpoint(got / "checkpoint.safetensors")
    want_ckpt = load_checkpoint(want / "checkpoint.safetensors")
    assert got_ckpt[1] == want_ckpt[1]
    assert got_ckpt[2] == want_ckpt[2], "checkpoint metadata differs"
    assert list(got_ckpt[0]) == list(want_ckpt[0])
    unequal = [n for n in want_ckpt[0] if not np.array_equal(got_ckpt[0][n], want_ckpt[0][n])]
    assert not unequal, f"final weights differ from the uninterrupted run: {unequal}"
    got_state, got_meta = load_tensors(got / "train_state.safetensors")
    want_state, want_meta = load_tensors(want / "train_state.safetensors")
    assert sorted(got_state) == sorted(want_state)
    unequal = [n for n in want_state if not np.array_equal(got_state[n], want_state[n])]
    assert not unequal, f"final train state differs from the uninterrupted run: {unequal}"
    assert (got_meta["epoch"], got_meta["step"]) == (want_meta["epoch"], want_meta["step"])
    assert without_seconds(read_metrics(got)) == without_seconds(read_metrics(want))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def file_epoch(path: Path) -> int:
    """The epoch a run file says it belongs to (its own metadata, or its number of records)."""
    if path.name == "metrics.jsonl":
        return len(path.read_text().splitlines())
    return int(load_tensors(path)[1]["epoch"])


def assert_manifest_holds(out: Path, epoch: int) -> None:
    """``run.json`` commits ``epoch`` and vouches for every epoch file with its true digest, and
    the checkpoint holds the train state's weights."""
    body = manifest(out)
    assert body["epoch"] == epoch
    for name in ("metrics.jsonl", "train_state.safetensors", "checkpoint.safetensors"):
        entry = body["files"][name]
        assert entry == {"epoch": epoch, "sha256": sha256(out / name)}, name
        assert file_epoch(out / name) == epoch, name
    for name, entry in body["files"].items():
        assert entry["sha256"] == sha256(out / name), f"run.json's digest of {name} is stale"
    state = load_tensors(out / "train_state.safetensors")[0]
    weights = load_checkpoint(out / "checkpoint.safetensors")[0]
    assert all(np.array_equal(state["param." + n], v) for n, v in weights.items())
