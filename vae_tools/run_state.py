"""The files of a training run that ``--resume`` reads: the train state and the metrics log.

- ``train_state.safetensors``: weights (``param.<name>``), Adam's moments (canonical names) and
  progress (epoch, step), with the model, training and run settings in its metadata; a resume
  is refused, naming the differing fields, unless they match.
- ``metrics.jsonl``: one JSON record per finished epoch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    check_state,
    load_tensors,
    save_tensors,
)
from vae_common.config import VAEConfig
from vae_common.errors import ResumeError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig, optimizer_state_names

STATE_FORMAT = "vae-twin-train-state/1"
PARAM = "param."


@dataclass(frozen=True)
class RunSettings:
    """What a resumed run must share with the original (besides the model and Adam settings)."""

    dataset: str
    batch_size: int = 128
    seed: int = 0
    dtype: str = "float32"
    static_binarize: bool = False


def settings_meta(config: VAEConfig, train: TrainConfig, settings: RunSettings) -> dict[str, str]:
    """The settings a resume must match, as JSON strings for safetensors metadata."""
    return {
        "config": config.to_json(),
        "train": train.to_json(),
        "settings": json.dumps(asdict(settings), sort_keys=True),
    }


def save_train_state(
    path: Path,
    trainer: TrainerBase,
    config: VAEConfig,
    train: TrainConfig,
    settings: RunSettings,
    epoch: int,
) -> None:
    """Write the weights, Adam's moments and progress of ``trainer`` after ``epoch``
    (atomically)."""
    tensors = {PARAM + k: v for k, v in trainer.state_dict().items()}
    tensors.update(trainer.optimizer_state_dict())
    meta = settings_meta(config, train, settings)
    meta.update(
        {
            "format": STATE_FORMAT,
            "epoch": str(epoch),
            "step": str(trainer.step),
            "backend": trainer.backend,
        }
    )
    save_tensors(path, tensors, meta)


def load_train_state(
    path: Path, config: VAEConfig, train: TrainConfig, settings: RunSettings
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, int]:
    """Read a train state and refuse it unless it was made with the same settings.

    Returns:
      ``(params, optimizer_tensors, epoch, step)``.
    """
    tensors, meta = load_tensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state ({STATE_FORMAT})")
    stored = {k: meta.get(k) for k in ("config", "train", "settings")}
    if stored["train"]:
        # Normalised through TrainConfig, so a state written before a field rename compares
        # equal to the same settings under the new names.
        try:
            stored["train"] = TrainConfig.from_json(stored["train"]).to_json()
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: its stored training settings are invalid: {exc}"
            ) from None
    wanted = settings_meta(config, train, settings)
    for key in ("config", "train", "settings"):
        if stored[key] != wanted[key]:
            old, new = json.loads(stored[key] or "{}"), json.loads(wanted[key])
            diffs = {
                k: [old.get(k), new.get(k)]
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            }
            raise ResumeError(
                f"--resume refused: {path} was made with a different {key}; differing fields "
                f"[stored, requested]: {json.dumps(diffs)}"
            )
    params = {k[len(PARAM) :]: v for k, v in tensors.items() if k.startswith(PARAM)}
    check_state(params, config, what=str(path))
    opt = {k: v for k, v in tensors.items() if not k.startswith(PARAM)}
    missing = [n for n in optimizer_state_names(config) if n not in opt]
    if missing:
        raise CheckpointError(f"{path} lacks optimizer tensors {missing[:3]}")
    return params, opt, int(meta["epoch"]), int(meta["step"])


# metrics.jsonl keys renamed in version 0.2 (they hold the *negative* ELBO): old -> new.
RENAMED_METRICS = {"test_elbo": "test_neg_elbo"}


def read_metrics(path: Path, epochs_done: int) -> list[dict[str, Any]]:
    """The per-epoch records up to ``epochs_done``; records written before the renames in
    ``RENAMED_METRICS`` are read under the new names."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [{RENAMED_METRICS.get(k, k): v for k, v in m.items()} for m in lines]
    return [m for m in lines if m["epoch"] <= epochs_done]


def write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` atomically with ``metrics``, one JSON record a line."""
    atomic_write_bytes(path, "".join(json.dumps(m) + "\n" for m in metrics).encode())
