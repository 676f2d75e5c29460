"""The train state of a run, ``train_state.safetensors``, that ``--resume`` reads, and the run
settings it records.

``train_state.safetensors`` holds weights (``param.<name>``), Adam's moments (canonical names)
and progress (epoch, step), with the model, training and run settings in its metadata; a resume
is refused, naming the differing fields, unless they match. The metrics log that ``--resume``
reads too is in ``vae_tools.run_metrics`` (its functions are re-exported here).
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
    check_optimizer_state,
    check_state,
    load_tensors,
    save_tensors,
)
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError, ResumeError
from vae_common.precision import check_precision
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig
from vae_tools.run_metrics import (
    METRIC_KEYS,
    NUMBER_KEYS,
    RENAMED_METRICS,
    append_metrics,
    metrics_bytes,
    read_metrics,
    truncate_metrics,
    write_metrics,
)

__all__ = [
    "LEGACY_SETTINGS",
    "METRIC_KEYS",
    "NUMBER_KEYS",
    "PARAM",
    "RENAMED_METRICS",
    "STATE_FORMAT",
    "RunSettings",
    "append_metrics",
    "load_train_state",
    "metrics_bytes",
    "read_metrics",
    "save_train_state",
    "settings_meta",
    "truncate_metrics",
    "write_metrics",
]

STATE_FORMAT = "vae-twin-train-state/1"
PARAM = "param."


@dataclass(frozen=True)
class RunSettings:
    """What a resumed run must share with the original (besides the model and Adam settings).

    Attributes:
      dataset: the dataset spec (``vae_common.data.load_dataset``).
      batch_size: examples per Adam step.
      seed: the seed of the initial weights, the batches, the noise, the binarization draws and
        the validation split (each from its own stream: ``vae_tools.run_data``).
      dtype: ``"float32"`` or ``"float64"``.
      static_binarize: binarize the images once, before training (``--binarize static``).
      val_split: examples held out of the training set as the validation set (0: none).
      drop_last: drop the ``n % batch_size`` examples left over after the full batches of an
        epoch instead of running them as one more, smaller step.
      precision: the training steps' precision (``vae_common.precision``).
    """

    dataset: str
    batch_size: int = 128
    seed: int = 0
    dtype: str = "float32"
    static_binarize: bool = False
    val_split: int = 0
    drop_last: bool = False
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.precision, self.dtype)
        if isinstance(self.val_split, bool) or not isinstance(self.val_split, int):
            raise ConfigError(f"val_split must be an integer, got {self.val_split!r}")
        if self.val_split < 0:
            raise ConfigError(f"val_split must be >= 0, got {self.val_split}")


# Settings a train state written before they existed was made with: version 0.1 held out no
# validation set and dropped the last incomplete batch of every epoch; states from before
# --precision trained in float32.
LEGACY_SETTINGS = {"val_split": 0, "drop_last": True, "precision": "float32"}


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
    stored_settings = {**LEGACY_SETTINGS, **stored_settings}
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
