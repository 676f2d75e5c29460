"""Checkpoints: one safetensors file with the config in its metadata, written atomically.

The tensors are the canonical state (PyTorch ``state_dict`` names and layouts, see
``vae_common.spec``). Loading checks every name, shape and dtype against the spec of the stored
config, and, when the caller expects a config, that the two match.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from vae_common.config import VAEConfig
from vae_common.constants import DTYPES
from vae_common.errors import CheckpointError, ConfigError
from vae_common.spec import param_spec

FORMAT = "vae-twin/1"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory, are flushed to disk, and replace the
    target with one ``os.replace``; a crash at any point leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp files of this target left by a writer that was killed mid-write.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    """Atomically write numpy ``tensors`` and string ``metadata`` as one safetensors file."""
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata=dict(metadata)))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays and its metadata ; CheckpointError if not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or another format): {exc}"
        ) from None
    return tensors, metadata


def check_state(state: Mapping[str, np.ndarray], config: VAEConfig, what: str = "state") -> str:
    """Check names, shapes and dtypes of a canonical ``state`` against the spec of ``config``.

    Returns:
      the common dtype name (``"float32"`` or ``"float64"``).

    Raises:
      CheckpointError naming every missing or extra tensor, or the first mis-shaped one.
    """
    specs = param_spec(config)
    expected = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in state]
    extra = sorted(set(state) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        raise CheckpointError(f"{what} does not match the config: " + "; ".join(parts))
    dtypes = set()
    for s in specs:
        arr = state[s.name]
        shape = tuple(np.shape(arr))
        if shape != s.shape:
            raise CheckpointError(
                f"{what}: tensor {s.name!r} has shape {shape}, the config needs {s.shape}"
            )
        dtype = np.dtype(getattr(arr, "dtype", np.float64)).name
        if dtype not in DTYPES:
            raise CheckpointError(
                f"{what}: tensor {s.name!r} has dtype {dtype}; expected one of {DTYPES}"
            )
        dtypes.add(dtype)
    if len(dtypes) > 1:
        raise CheckpointError(f"{what}: tensors mix dtypes {sorted(dtypes)}")
    return dtypes.pop()


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
