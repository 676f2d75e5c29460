"""The files of a training run that ``--resume`` reads: the train state and the metrics log.

- ``train_state.safetensors``: weights (``param.<name>``), Adam's moments (canonical names) and
  progress (epoch, step), with the model, training and run settings in its metadata; a resume
  is refused, naming the differing fields, unless they match.
- ``metrics.jsonl``: one JSON record per finished epoch, appended as the epoch ends
  (``append_metrics``); ``--resume`` truncates it to the committed epochs.
"""

from __future__ import annotations

import json
import os
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
from vae_common.precision import check_precision
from vae_common.trainer import TrainerBase
from vae_common.training import TrainConfig

STATE_FORMAT = "vae-twin-train-state/1"
PARAM = "param."


@dataclass(frozen=True)
class RunSettings:
    """What a resumed run must share with the original (besides the model and Adam settings).

    Attributes:
      dataset: the dataset spec (``vae_common.data.load_dataset``).
      batch_size: examples per Adam step.
      seed: the seed of the initial weights, the batches, the noise, the binarization draws and
        the validation split (each from its own stream: ``vae_tools.run``).
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


# metrics.jsonl keys renamed in version 0.2 (they hold the *negative* ELBO): old -> new.
RENAMED_METRICS = {"test_elbo": "test_neg_elbo"}
# Keys every metrics record holds.
METRIC_KEYS = ("epoch", "step", "train_loss", "train_losses")
# Numbers a record may hold (the held-out metrics only when they were evaluated that epoch);
# each one present must be finite.
NUMBER_KEYS = (
    "train_loss",
    "val_neg_elbo",
    "val_reconstruction",
    "val_kl",
    "test_neg_elbo",
    "test_reconstruction",
    "test_kl",
)
_CANNOT_RESUME = "the run cannot resume from it (restore the file, or start over with --overwrite)"


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_record(record: Any, epoch: int, where: str) -> dict[str, Any]:
    """The record of ``epoch`` (renamed keys read under their new names), or CheckpointError."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} is not a JSON object; {_CANNOT_RESUME}")
    record = {RENAMED_METRICS.get(k, k): v for k, v in record.items()}
    missing = [k for k in METRIC_KEYS if k not in record]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}; {_CANNOT_RESUME}")
    if type(record["epoch"]) is not int or record["epoch"] != epoch:
        raise CheckpointError(
            f"{where} records epoch {record['epoch']!r} where epoch {epoch} belongs; "
            f"{_CANNOT_RESUME}"
        )
    if type(record["step"]) is not int or record["step"] < 0:
        raise CheckpointError(f"{where}: step {record['step']!r} is not a count; {_CANNOT_RESUME}")
    bad = [k for k in NUMBER_KEYS if k in record and not _finite_number(record[k])]
    losses = record["train_losses"]
    if not isinstance(losses, list) or not all(_finite_number(v) for v in losses):
        bad.append("train_losses")
    if bad:
        raise CheckpointError(f"{where}: {bad} must be finite numbers; {_CANNOT_RESUME}")
    return record


def read_metrics(path: Path, epochs_done: int) -> list[dict[str, Any]]:
    """The records of epochs ``1 .. epochs_done``, checked, in order.

    Lines after them (an epoch whose files were never committed) are not read. Records written
    before the renames in ``RENAMED_METRICS`` are read under the new names.

    Raises:
      CheckpointError naming the file, and the line where one is at fault: the file is missing
      or unreadable, holds fewer records, or a record is not a JSON object, lacks a key of
      ``METRIC_KEYS``, is out of sequence or holds a number that is not finite.
    """
    if epochs_done == 0:
        return []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing but the train state is at epoch {epochs_done}; {_CANNOT_RESUME}"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if len(records) == epochs_done:
            break
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line, parse_constant=_not_json)
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(
                f"{where} is not a JSON record ({exc}); {_CANNOT_RESUME}"
            ) from None
        records.append(_check_record(record, len(records) + 1, where))
    if len(records) < epochs_done:
        raise CheckpointError(
            f"{path} holds {len(records)} epoch records but the train state is at epoch "
            f"{epochs_done}; {_CANNOT_RESUME}"
        )
    return records


def metrics_bytes(metrics: list[dict[str, Any]]) -> bytes:
    """The contents of ``metrics.jsonl`` for ``metrics``: one strict JSON record a line (NaN and
    Inf are not JSON and raise ``ValueError``; the run never records them)."""
    return "".join(json.dumps(m, allow_nan=False) + "\n" for m in metrics).encode()


def write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` atomically with ``metrics`` (``metrics_bytes``)."""
    atomic_write_bytes(path, metrics_bytes(metrics))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one record (one line of ``metrics_bytes``) to ``metrics.jsonl``, flushed to disk.

    An append is not atomic: a kill part-way leaves a partial last line. That line belongs to an
    epoch the manifest never committed, and ``--resume`` truncates the file to the committed
    records (``truncate_metrics``) before it appends again.
    """
    data = metrics_bytes([record])
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(path: Path, metrics: list[dict[str, Any]]) -> bool:
    """Make ``metrics.jsonl`` hold exactly ``metrics``: unchanged when it does, cut after them
    when they are its first lines (what an epoch that was not committed leaves), else rewritten
    atomically (records read under renamed keys, a damaged line after them). Returns whether
    the file changed."""
    text = metrics_bytes(metrics)
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if current == text:
        return False
    if current is not None and current.startswith(text):
        with open(path, "r+b") as f:
            f.truncate(len(text))
            f.flush()
            os.fsync(f.fileno())
        return True
    write_metrics(path, metrics)
    return True
