"""Files written atomically (``atomic_write_bytes``, ``read_file``) and safetensors files of numpy
arrays that carry a SHA-256 of their contents (``save_tensors``, ``load_tensors``): whatever a
file holds, loading it returns what was saved or raises ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from vae_common.errors import CheckpointError

# The metadata key holding the SHA-256 of a file's contents (see ``content_digest``): tensor
# names, dtypes, shapes, bytes and the other metadata, so ``load_tensors`` refuses a file with a
# flipped byte anywhere instead of returning a different model. Files without the key (written
# by plain safetensors) load unchecked.
DIGEST_KEY = "content_sha256"

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
