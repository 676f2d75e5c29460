"""Datasets, validation, binarization and seeded batching, in numpy only.

Images are float32 arrays of shape (N, C, H, W) with values in [0, 1]. Both backends consume the
same index arrays from ``batch_indices``, so for one seed they see the same batches in the same
order.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vae_common.checks import pixel_value_error
from vae_common.errors import DataError, ShapeError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DATASETS = ("mnist", "fashion-mnist", "kmnist", "idx")
DIGITS_TEST_SIZE = 297
# The largest array a data file may declare, in bytes (2 GiB; Fashion-MNIST's largest file holds
# 47 MB). A header (IDX) or a zip entry (npz) declaring more is refused before anything is read,
# and no read goes past the declared size: a small gzip or zip file cannot expand to fill memory.
MAX_DATA_BYTES = 1 << 31
IDX_MAGIC = {2051: 3, 2049: 1}  # unsigned-byte images (N, rows, cols) and labels (N,)


@dataclass(frozen=True)
class Dataset:
    """A train/test split of images in [0, 1].

    Attributes:
      name: how it was specified (e.g. ``"digits"``, ``"fashion-mnist:/data/fmnist"``).
      train, test: float32 arrays (N, C, H, W) with values in [0, 1].
      train_labels, test_labels: int64 arrays (N,).
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray
    test_labels: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def validate_images(x: np.ndarray, likelihood: str | None = "bernoulli", name: str = "x") -> None:
    """``DataError`` unless ``x`` is a float array (N, C, H, W) whose values suit ``likelihood``.

    The values follow ``vae_common.checks.pixel_value_error``, the rule the loss functions apply:
    every value finite; in [0, 1] for ``"bernoulli"``; any finite value for ``"gaussian"`` (and
    for None, when the likelihood is not known yet, as while loading a file).
    """
    if not isinstance(x, np.ndarray):
        raise DataError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise DataError(f"{name} must have shape (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name} must be floating point, got dtype {x.dtype}")
    if not x.size:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    nonfinite = None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nonfinite = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    error = pixel_value_error(name, lo, hi, likelihood or "gaussian", nonfinite)
    if error is not None:
        raise error


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1].

    A fixed permutation (``seed``) splits off the last 297 images as the test set.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    n = len(x) - DIGITS_TEST_SIZE
    return Dataset("digits", x[:n], x[n:], y[:n], y[n:])


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


def load_idx_dir(directory: str | os.PathLike, name: str | None = None) -> Dataset:
    """The four standard MNIST-format IDX files of ``directory`` (``.gz`` or raw)."""
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
    return Dataset(
        name or f"idx:{directory}",
        _to_unit(train),
        _to_unit(test),
        arrays["train_labels"].astype(np.int64),
        arrays["test_labels"].astype(np.int64),
    )


def _to_unit(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz archive; ``DataError`` naming the file for anything else (a bad zip,
    a single ``.npy`` array, pickled objects, an entry declaring more than MAX_DATA_BYTES)."""
    try:
        # Memory-mapped: a single .npy array (refused below) is not read into memory.
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path} holds a single .npy array of shape {np.shape(loaded)}, not an .npz archive "
            f"with arrays {list(NPZ_ARRAYS)}"
        )
    with loaded as f:
        for info in f.zip.infolist():
            # The uncompressed size from the zip directory: zipfile reads no further than it.
            if info.file_size > MAX_DATA_BYTES:
                raise DataError(
                    f"{path}: entry {info.filename} declares {info.file_size} bytes, more than "
                    f"the {MAX_DATA_BYTES}-byte limit (vae_common.data.MAX_DATA_BYTES)"
                )
        try:
            arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{path} is not a readable .npz file: {exc}") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise DataError(f"{path}: entry {key} is not a .npy array")
    return arrays


def load_npz(path: str | os.PathLike) -> Dataset:
    """A Keras-style ``mnist.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Images (N, H, W) or (N, C, H, W): uint8 scaled to [0, 1], other real numbers kept as they
    are (float32); labels integers. The values are checked here only for being finite: whether
    they suit the likelihood (in [0, 1] for Bernoulli) is checked where the model is known
    (``validate_images`` in ``vae_tools.run``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    arrays = _read_npz(path)
    missing = [k for k in NPZ_ARRAYS if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks arrays {missing} (has {sorted(arrays)})")
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{path}: x_{split} must be (N, H, W) or (N, C, H, W) and y_{split} (N,), got "
                f"{x.shape} and {y.shape}"
            )
        if x.dtype.kind not in "biuf":
            raise DataError(
                f"{path}: x_{split} must hold real numbers (uint8 or floating point), got dtype "
                f"{x.dtype}"
            )
        if y.dtype.kind not in "iu":
            raise DataError(f"{path}: y_{split} must hold integer labels, got dtype {y.dtype}")
        if not len(x):
            raise DataError(f"{path}: x_{split} holds no images")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        else:
            x = x.astype(np.float32)
        validate_images(x, None, name=f"{path}:x_{split}")
        out[split] = (x, y.astype(np.int64))
    train, test = out["train"][0], out["test"][0]
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{path}: x_train images are {train.shape[1:]} (C, H, W) but x_test images are "
            f"{test.shape[1:]}; both splits must have one image size"
        )
    return Dataset(f"npz:{path}", train, test, out["train"][1], out["test"][1])


def load_dataset(spec: str) -> Dataset:
    """Load a dataset from a spec string.

    ``digits`` (bundled default); ``mnist:DIR``, ``fashion-mnist:DIR``, ``kmnist:DIR`` or
    ``idx:DIR`` (the four standard IDX files); ``npz:FILE`` (Keras-style ``mnist.npz``).
    """
    if spec == "digits":
        return load_digits()
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise DataError(
            f"unknown dataset {spec!r}; use digits, mnist:DIR, fashion-mnist:DIR, kmnist:DIR, "
            "idx:DIR or npz:FILE"
        )
    if kind in IDX_DATASETS:
        return load_idx_dir(arg, name=spec)
    if kind == "npz":
        return load_npz(arg)
    raise DataError(
        f"unknown dataset kind {kind!r} in {spec!r}; use digits, mnist:DIR, fashion-mnist:DIR, "
        "kmnist:DIR, idx:DIR or npz:FILE"
    )


def binarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic binarization: each pixel is 1 with probability equal to its intensity.

    Static binarization calls this once with a fixed seed; dynamic binarization calls it afresh
    every epoch (the training loops draw it on the device instead).
    """
    return (rng.random(x.shape, dtype=np.float32) < x).astype(x.dtype)


def batch_indices(
    n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> np.ndarray:
    """Indices of the training batches of one epoch, shape (n // batch_size, batch_size).

    A permutation drawn from ``(seed, epoch)`` (or the identity when ``shuffle`` is False); the
    last incomplete batch is dropped so every step has the same shape. Both backends use this.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if n < batch_size:
        raise DataError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    steps = n // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def standard_normal(
    seed: int, stream: int, shape: tuple[int, ...], dtype: str = "float64"
) -> np.ndarray:
    """Seeded N(0, 1) noise both backends share: one ``(seed, stream)``, one array."""
    return np.random.default_rng([seed, stream]).standard_normal(shape).astype(dtype)


def check_batches(batches: npt.ArrayLike, n: int, wide: bool = False) -> np.ndarray:
    """``batches`` as an (S, B) integer array (int32, or int64 with ``wide``) of indices into
    ``n`` samples; a ShapeError naming the problem otherwise (the trainers call it, so a bad
    index is refused before any step instead of being clamped or failing deep inside)."""
    batches = np.asarray(batches)
    if batches.ndim != 2 or not np.issubdtype(batches.dtype, np.integer):
        raise ShapeError(
            f"batches must be an (steps, batch) integer array, got shape {batches.shape} "
            f"and dtype {batches.dtype}"
        )
    if batches.size and (batches.min() < 0 or batches.max() >= n):
        raise ShapeError(
            f"batches holds indices in [{batches.min()}, {batches.max()}] but data has {n} samples"
        )
    return batches.astype(np.int64 if wide else np.int32)
