"""The metrics log of a training run, ``metrics.jsonl``: one JSON record per finished epoch,
appended as the epoch ends (``append_metrics``), read back checked (``read_metrics``) and
truncated to the committed epochs on ``--resume``; and the best epoch the records name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vae_common.checkpoint import atomic_write_bytes
from vae_common.errors import CheckpointError

# metrics.jsonl keys renamed in version 0.2 (they hold the *negative* ELBO): old -> new.
RENAMED_METRICS = {"test_elbo": "test_neg_elbo"}
# Keys every metrics record holds.
METRIC_KEYS = ("epoch", "step", "train_loss", "train_losses")
# Keys of a record that measure wall time (``seconds``: the epoch's training; the others derived
# from it), so two runs of the same numbers differ in them.
TIMING_KEYS = ("seconds", "samples_per_s", "data_wait_share")
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
    "samples_per_s",
    "data_wait_share",
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


def best_epoch(metrics: list[dict[str, Any]]) -> int | None:
    """The epoch of the lowest ``val_neg_elbo`` in ``metrics`` (the first on a tie), or None
    when no record holds one."""
    best: tuple[float, int] | None = None
    for m in metrics:
        value = m.get("val_neg_elbo")
        if value is not None and (best is None or value < best[0]):
            best = (float(value), int(m["epoch"]))
    return None if best is None else best[1]


def epochs_since_best(metrics: list[dict[str, Any]]) -> int:
    """Epochs in ``metrics`` after the best one (``best_epoch``); 0 when none is best."""
    best = best_epoch(metrics)
    return len(metrics) - best if best is not None else 0
