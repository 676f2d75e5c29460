"""Checkpoints: one safetensors file with the config in its metadata, written atomically.

The tensors are the canonical state (PyTorch ``state_dict`` names and layouts, see
``vae_common.spec``). Loading checks every name, shape and dtype against the spec of the stored
config, that every value is finite, and, when the caller expects a config, that the two match.

Every file ``save_tensors`` writes carries a SHA-256 of its contents (tensor names, dtypes,
shapes, bytes and the other metadata) under ``DIGEST_KEY``; ``load_tensors`` refuses a file whose
contents no longer match it, so a flipped byte anywhere in a file is an error, not a different
model. Files without the key (written by plain safetensors) load unchecked.

Whatever a file holds, loading it returns what was saved or raises ``CheckpointError``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import tempfile
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from vae_common.config import VAEConfig
from vae_common.constants import DTYPES
from vae_common.data import DataSource
from vae_common.errors import CheckpointError, ConfigError, DataError
from vae_common.spec import param_spec
from vae_common.training import EXP_AVG, EXP_AVG_SQ, optimizer_state_names

FORMAT = "vae-twin/1"

# The metadata key holding the SHA-256 of a file's contents (see ``content_digest``).
DIGEST_KEY = "content_sha256"

# The metadata key of the data a run trained on: a ``vae_common.data.DataSource`` as JSON (spec,
# layout, resize, color, held-out split, binarization). Optional: checkpoints written before it
# existed, or by hand, have none (``recorded_source`` returns None).
DATA_KEY = "data"

# safetensors dtype codes numpy can hold. Files may hold others (BF16, F8_*): those are refused
# by name instead of failing inside a conversion.
NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

# The largest step count both backends hold exactly: optax keeps Adam's count in an int32.
MAX_STEP = 2**31 - 1


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


def content_digest(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> str:
    """SHA-256 (hex) of ``tensors`` (name, dtype, shape and little-endian bytes, in name order)
    and of ``metadata`` (without ``DIGEST_KEY``, in key order): what ``DIGEST_KEY`` stores."""
    h = hashlib.sha256()
    meta = sorted((k, v) for k, v in metadata.items() if k != DIGEST_KEY)
    h.update(json.dumps(meta).encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(json.dumps([name, arr.dtype.name, list(arr.shape)]).encode())
        h.update(arr.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    """Atomically write numpy ``tensors`` and string ``metadata`` as one safetensors file, with
    the digest of both under ``DIGEST_KEY`` (a ``DIGEST_KEY`` in ``metadata`` is replaced)."""
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    meta = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    meta[DIGEST_KEY] = content_digest(arrays, meta)
    atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata=meta))


def read_file(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``; ``CheckpointError`` saying why it cannot be read
    (missing, a directory, not a regular file, permission denied, another OS error)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except NotADirectoryError:
        raise CheckpointError(
            f"{what} {path} does not exist: a parent is not a directory"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        # Opening a FIFO would block; a device is never a checkpoint.
        raise CheckpointError(f"{what} {path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    # Called only after safetensors has validated the header, so its length and JSON are sound;
    # the checks here keep that promise explicit rather than assumed.
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the safetensors header is not JSON: {exc}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    meta = meta or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise CheckpointError(f"{path}: the safetensors metadata is not a map of strings")
    return dict(meta)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays and its metadata (without ``DIGEST_KEY``).

    Raises:
      CheckpointError: the file is missing or unreadable, is not a whole safetensors file, holds
        a dtype numpy cannot represent, or its contents differ from its stored digest.
    """
    path = Path(path)
    data = read_file(path, "checkpoint")
    try:
        entries = safetensors.deserialize(data)
    except safetensors.SafetensorError as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or another format): {exc}"
        ) from None
    metadata = _header_metadata(data, path)
    tensors = {}
    for name, view in entries:
        dtype = NUMPY_DTYPES.get(view["dtype"])
        if dtype is None:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {view['dtype']}, which numpy cannot hold"
            )
        arr = np.frombuffer(view["data"], dtype).reshape(view["shape"])
        # safetensors hands over a fresh bytearray (a writeable array); older releases gave
        # immutable bytes, and callers may edit what they load.
        tensors[name] = arr if arr.flags.writeable else arr.copy()
    stored = metadata.pop(DIGEST_KEY, None)
    if stored is not None and stored != content_digest(tensors, metadata):
        raise CheckpointError(
            f"{path} is corrupted: its contents do not match the {DIGEST_KEY} stored in it"
        )
    return tensors, metadata


def _check_names(found: Iterable[str], expected: Iterable[str], what: str) -> None:
    """``CheckpointError`` naming every missing and every unexpected name."""
    found, expected = list(found), list(expected)
    present = set(found)
    missing = [n for n in expected if n not in present]
    extra = sorted(present - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        raise CheckpointError(f"{what} does not match the config: " + "; ".join(parts))


def _check_finite(name: str, arr: np.ndarray, what: str) -> None:
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise CheckpointError(
            f"{what}: tensor {name!r} holds {bad} non-finite value{'s' if bad > 1 else ''} "
            "(NaN or Inf)"
        )


def check_state(state: Mapping[str, np.ndarray], config: VAEConfig, what: str = "state") -> str:
    """Check names, shapes, dtypes and values of a canonical ``state`` against ``config``.

    Returns:
      the common dtype name (``"float32"`` or ``"float64"``).

    Raises:
      CheckpointError naming every missing or extra tensor, or the first mis-shaped, mis-typed
      or non-finite one.
    """
    specs = param_spec(config)
    _check_names(state, [s.name for s in specs], what)
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
        _check_finite(s.name, np.asarray(arr), what)
        dtypes.add(dtype)
    if len(dtypes) > 1:
        raise CheckpointError(f"{what}: tensors mix dtypes {sorted(dtypes)}")
    return dtypes.pop()


def check_optimizer_state(
    tensors: Mapping[str, Any], config: VAEConfig, dtype: str, what: str = "optimizer state"
) -> dict[str, np.ndarray]:
    """Check Adam's moments before any optimizer or kernel sees them.

    ``tensors`` must hold exactly ``vae_common.training.optimizer_state_names(config)``, each
    with its parameter's canonical shape, of ``dtype``, finite, the second moments
    (``adam.exp_avg_sq.*``) non-negative.

    Returns:
      the tensors as numpy arrays, in ``optimizer_state_names`` order.

    Raises:
      CheckpointError naming the missing or extra tensors, or the first bad one with its shape
      and dtype and the expected ones.
    """
    names = optimizer_state_names(config)
    _check_names(tensors, names, what)
    shapes = {s.name: s.shape for s in param_spec(config)}
    out = {}
    for name in names:
        arr = np.asarray(tensors[name])
        want = shapes[name.removeprefix(EXP_AVG_SQ).removeprefix(EXP_AVG)]
        if arr.shape != want or arr.dtype.name != dtype:
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {arr.shape} and dtype {arr.dtype.name}; "
                f"expected shape {want} and dtype {dtype}"
            )
        _check_finite(name, arr, what)
        if name.startswith(EXP_AVG_SQ) and np.any(arr < 0):
            raise CheckpointError(
                f"{what}: tensor {name!r} holds negative values; a second moment is a mean of "
                "squares"
            )
        out[name] = arr
    return out


def check_step(step: Any, what: str = "optimizer state") -> int:
    """``step`` as an int; ``CheckpointError`` unless it is an integer in [0, ``MAX_STEP``]."""
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise CheckpointError(f"{what}: the step count must be an integer, got {step!r}")
    if not 0 <= int(step) <= MAX_STEP:
        raise CheckpointError(f"{what}: the step count must be in [0, {MAX_STEP}], got {int(step)}")
    return int(step)


def check_param_mapping(
    found: Mapping[str, tuple[tuple[int, ...], str]],
    expected: Mapping[str, tuple[int, ...]],
    dtype: str,
    what: str = "params",
) -> None:
    """The check both backends run on a ``params`` argument before applying it.

    Args:
      found: ``{name: (shape, dtype name)}`` of the given mapping, canonical names where the
        backend's layout has one.
      expected: ``{name: shape}`` the model needs (in the backend's layout).
      dtype: the model's dtype name.

    Raises:
      CheckpointError naming every missing and extra key, or the first tensor of the wrong shape
      or dtype.
    """
    _check_names(found, expected, what)
    for name, want in expected.items():
        shape, got = found[name]
        if shape != want or got != dtype:
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {shape} and dtype {got}; expected shape "
                f"{want} and dtype {dtype}"
            )


@functools.lru_cache(maxsize=64)
def spec_shapes(config: VAEConfig) -> Mapping[str, tuple[int, ...]]:
    """``{canonical name: shape}`` of ``config``, read-only and cached (the per-call params checks
    of both backends use it)."""
    return types.MappingProxyType({s.name: s.shape for s in param_spec(config)})


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
