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
    MAX_STEP,
    CheckpointError,
    atomic_write_bytes,
    check_optimizer_state,
    check_state,
    load_tensors,
    save_tensors,
)
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError, ResumeError
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig

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


def _stored_json(meta: dict[str, str], key: str, path: Path) -> Any:
    text = meta.get(key)
    if text is None:
        raise CheckpointError(f"{path} is a training state without its stored {key}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its stored {key} is not valid JSON: {exc}") from None


def _stored_count(meta: dict[str, str], key: str, path: Path) -> int:
    # Plain decimal digits only: "-1", "1.5", " 2" or "+3" are not counts this file writes.
    text = meta.get(key)
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_STEP)):
        raise CheckpointError(
            f"{path}: its stored {key} must be an integer in [0, {MAX_STEP}], got {text!r}"
        )
    value = int(text)
    if value > MAX_STEP:
        raise CheckpointError(f"{path}: its stored {key} must be in [0, {MAX_STEP}], got {value}")
    return value


def _refuse_difference(path: Path, key: str, old: Any, new: dict[str, Any]) -> None:
    old = old if isinstance(old, dict) else {}
    diffs = {
        k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }
    raise ResumeError(
        f"--resume refused: {path} was made with a different {key}; differing fields "
        f"[stored, requested]: {json.dumps(diffs)}"
    )


def load_train_state(
    path: Path, config: VAEConfig, train: TrainConfig, settings: RunSettings
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, int]:
    """Read a train state and refuse it unless it was made with the same settings.

    Every stored value is checked before it is used: the format, the stored settings (valid
    JSON, a valid config and training config), the epoch and step (integers in [0, 2**31 - 1]),
    the weights (``check_state``, of the run's dtype) and Adam's moments
    (``check_optimizer_state``: exactly the canonical names, shapes and dtype, finite).

    Returns:
      ``(params, optimizer_tensors, epoch, step)``.

    Raises:
      CheckpointError: the file is missing, unreadable, corrupted or invalid (naming the path).
      ResumeError: a valid state made with other settings (naming the differing fields).
    """
    tensors, meta = load_tensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state ({STATE_FORMAT})")
    try:
        stored_config = VAEConfig.from_dict(_stored_json(meta, "config", path))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its stored config is invalid: {exc}") from None
    try:
        # Normalised through TrainConfig, so a state written before a field rename compares
        # equal to the same settings under the new names.
        stored_train = TrainConfig.from_json(meta.get("train") or "")
    except (TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its stored training settings are invalid: {exc}") from None
    stored_settings = _stored_json(meta, "settings", path)
    if not isinstance(stored_settings, dict):
        raise CheckpointError(f"{path}: its stored run settings are not a JSON object")
    epoch = _stored_count(meta, "epoch", path)
    step = _stored_count(meta, "step", path)

    if stored_config.to_json() != config.to_json():
        _refuse_difference(path, "config", stored_config.to_dict(), config.to_dict())
    if stored_train.to_json() != train.to_json():
        _refuse_difference(path, "train", asdict(stored_train), asdict(train))
    wanted = asdict(settings)
    if json.dumps(stored_settings, sort_keys=True) != json.dumps(wanted, sort_keys=True):
        _refuse_difference(path, "settings", stored_settings, wanted)

    params = {k[len(PARAM) :]: v for k, v in tensors.items() if k.startswith(PARAM)}
    dtype = check_state(params, config, what=str(path))
    if dtype != settings.dtype:
        raise CheckpointError(f"{path}: the weights are {dtype} but the run is {settings.dtype}")
    opt = {k: v for k, v in tensors.items() if not k.startswith(PARAM)}
    opt = check_optimizer_state(opt, config, settings.dtype, what=str(path))
    return params, opt, epoch, step


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
