"""IDX files, MNIST's format (raw or gzipped): ``read_idx`` reads one within a size limit,
``load_idx_dir`` the four standard files of a directory as a ``Dataset``.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np

from vae_common.datasets import MAX_DATA_BYTES, Dataset
from vae_common.errors import DataError
from vae_common.layout import float_images
from vae_common.sources import DataSource

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DATASETS = ("mnist", "fashion-mnist", "kmnist", "idx")
IDX_MAGIC = {2051: 3, 2049: 1}  # unsigned-byte images (N, rows, cols) and labels (N,)


def _open_maybe_gz(path: Path) -> gzip.GzipFile | io.BufferedReader:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_DATA_BYTES) -> np.ndarray:
    """Read one IDX file (raw or gzipped): images (magic 2051) or labels (magic 2049), as uint8.

    The header is read first: a declared size above ``max_bytes`` is refused before any data is
    read, a raw file must have exactly the declared size, and a gzipped one is decompressed only
    up to one byte past it (a small file cannot expand without bound). ``DataError`` naming the
    file for anything that is not a complete IDX file.
    """
    path = Path(path)
    try:
        with _open_maybe_gz(path) as f:
            head = f.read(8)
            magic = int.from_bytes(head[:4], "big") if len(head) == 8 else None
            ndim = IDX_MAGIC.get(magic) if magic is not None else None
            more = f.read(4 * (ndim - 1)) if ndim else b""
            header = len(head) + len(more)
            if magic is None or (ndim is not None and len(more) < 4 * (ndim - 1)):
                raise DataError(f"{path} is too short to be an IDX file ({header} bytes)")
            if ndim is None:
                raise DataError(f"{path} is not an IDX image or label file (magic number {magic})")
            blob = head[4:] + more
            dims = tuple(int.from_bytes(blob[4 * i : 4 * i + 4], "big") for i in range(ndim))
            expected = math.prod(dims)  # Python ints: no overflow, whatever the header says
            declared = f"header says shape {dims} ({header + expected} bytes)"
            if expected > max_bytes:
                raise DataError(
                    f"{path}: {declared}, more than the {max_bytes}-byte limit for one data file "
                    "(vae_common.data.MAX_DATA_BYTES); corrupt or not an image dataset"
                )
            if isinstance(f, io.BufferedReader):
                size = os.fstat(f.fileno()).st_size
                if size != header + expected:
                    raise DataError(
                        f"{path}: {declared}, file has {size} bytes (truncated or corrupt)"
                    )
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) != expected:
        found = "more" if len(data) > expected else f"{header + len(data)} bytes"
        raise DataError(f"{path}: {declared}, file has {found} (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory} has no {stem} or {stem}.gz (the standard IDX file names)")


def load_idx_dir(
    directory: str | os.PathLike, name: str | None = None, keep_uint8: bool = False
) -> Dataset:
    """The four standard MNIST-format IDX files of ``directory`` (``.gz`` or raw).

    Images (N, 1, H, W): float32 pixels / 255 (``vae_common.layout.float_images``), or with
    ``keep_uint8`` the stored uint8 pixels (no float copy); labels int64 (N,).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"dataset directory {directory} does not exist")
    paths = {key: _find_idx(directory, stem) for key, stem in IDX_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{directory}: {split} images must be 3-D and labels 1-D IDX arrays")
        if len(images) != len(labels):
            raise DataError(
                f"{directory}: {len(images)} {split} images but {len(labels)} {split} labels"
            )
        if not len(images):
            raise DataError(f"{paths[f'{split}_images']} holds no images")
    train, test = arrays["train_images"], arrays["test_images"]
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"train images {paths['train_images']} are {train.shape[1]}x{train.shape[2]} but "
            f"test images {paths['test_images']} are {test.shape[1]}x{test.shape[2]}; both "
            "splits must have one image size"
        )
    train, test = train[:, None], test[:, None]
    if not keep_uint8:
        train, test = float_images(train), float_images(test)
    return Dataset(
        name or f"idx:{directory}",
        train,
        test,
        arrays["train_labels"].astype(np.int64),
        arrays["test_labels"].astype(np.int64),
        DataSource(name or f"idx:{directory}"),
    )
