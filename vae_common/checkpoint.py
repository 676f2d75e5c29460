"""Checkpoints: one safetensors file with the config in its metadata, written atomically.

The tensors are the canonical state (PyTorch ``state_dict`` names and layouts, see
``vae_common.spec``). Loading checks every name, shape and dtype against the spec of the stored
config, that every value is finite (``vae_common.state_checks``), and, when the caller expects a
config, that the two match. The file is written and read by ``vae_common.files``: atomically,
with a digest of its contents that loading verifies. The metadata may record the data a run
trained on (``DATA_KEY``, ``recorded_source``).

Whatever a file holds, loading it returns what was saved or raises ``CheckpointError``. The
public names of ``vae_common.files`` and ``vae_common.state_checks`` are importable from here too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from vae_common.config import VAEConfig
from vae_common.errors import CheckpointError, ConfigError, DataError
from vae_common.files import (
    DIGEST_KEY,
    NUMPY_DTYPES,
    atomic_write_bytes,
    content_digest,
    load_tensors,
    read_file,
    save_tensors,
)
from vae_common.sources import DataSource
from vae_common.spec import param_spec
from vae_common.state_checks import (
    MAX_STEP,
    check_optimizer_state,
    check_param_mapping,
    check_state,
    check_step,
    spec_shapes,
)

__all__ = [
    "DATA_KEY",
    "DIGEST_KEY",
    "FORMAT",
    "MAX_STEP",
    "NUMPY_DTYPES",
    "CheckpointError",
    "atomic_write_bytes",
    "check_optimizer_state",
    "check_param_mapping",
    "check_state",
    "check_step",
    "content_digest",
    "data_metadata",
    "load_checkpoint",
    "load_tensors",
    "read_file",
    "recorded_source",
    "save_checkpoint",
    "save_tensors",
    "spec_shapes",
]

FORMAT = "vae-twin/1"

# The metadata key of the data a run trained on: a ``vae_common.sources.DataSource`` as JSON
# (spec, layout, resize, color, held-out split, binarization). Optional: checkpoints written
# before it existed, or by hand, have none (``recorded_source`` returns None).
DATA_KEY = "data"


def save_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, np.ndarray],
    config: VAEConfig,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically save a canonical ``state`` with ``config`` (and optional string ``metadata``).

    The state is validated first, so an invalid state never reaches the disk.
    """
    state = {k: np.asarray(v) for k, v in state.items()}
    check_state(state, config)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"format": FORMAT, "config": config.to_json()})
    ordered = {s.name: state[s.name] for s in param_spec(config)}
    save_tensors(path, ordered, meta)


def load_checkpoint(
    path: str | os.PathLike, expected_config: VAEConfig | None = None
) -> tuple[dict[str, np.ndarray], VAEConfig, dict[str, str]]:
    """Load and validate a checkpoint.

    Args:
      path: a file written by ``save_checkpoint``.
      expected_config: when given, the stored config must equal it.

    Returns:
      ``(state, config, metadata)``: the canonical state as numpy arrays (in spec order), the
      stored config and the remaining metadata strings.
    """
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not a VAE checkpoint (no {FORMAT!r} config metadata)"
        )
    try:
        config = VAEConfig.from_json(metadata.pop("config"))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored config is invalid: {exc}") from None
    metadata.pop("format")
    if expected_config is not None and config != expected_config:
        diffs = {
            k: (v, getattr(expected_config, k))
            for k, v in config.to_dict().items()
            if v != expected_config.to_dict()[k]
        }
        raise CheckpointError(
            f"{path} was saved with a different config; differing fields (stored, expected): "
            f"{json.dumps(diffs)}"
        )
    check_state(tensors, config, what=str(path))
    return {s.name: tensors[s.name] for s in param_spec(config)}, config, metadata


def data_metadata(source: DataSource) -> dict[str, str]:
    """``{DATA_KEY: source as JSON}``: the entry ``save_checkpoint``'s ``metadata`` takes to
    record the data a checkpoint was trained on."""
    return {DATA_KEY: source.to_json()}


def recorded_source(
    metadata: Mapping[str, str], path: str | os.PathLike = "checkpoint"
) -> DataSource | None:
    """The ``DataSource`` a checkpoint's ``metadata`` records (``load_checkpoint``'s third
    value), or None when it records none; ``vae_common.data.load_dataset(source)`` loads those
    images again (binarize them as ``source.binarize`` says).

    Raises:
      CheckpointError naming ``path`` when the entry is not a valid data source.
    """
    text = metadata.get(DATA_KEY)
    if text is None:
        return None
    try:
        return DataSource.from_json(text)
    except DataError as exc:
        raise CheckpointError(f"{path}: its recorded data source is invalid: {exc}") from None
