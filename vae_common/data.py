"""Datasets, validation, binarization and seeded batching, in numpy only (image folders are read
with Pillow, in ``vae_common.images``).

Images are float32 arrays of shape (N, C, H, W), C in {1, 3, 4}. Both backends consume the same
index arrays from ``batch_indices``, so for one seed they see the same batches in the same order.

Sources (``load_dataset``): ``digits``, IDX directories, ``npz:FILE``, ``images:DIR`` and numpy
arrays from Python (``Dataset.from_arrays``). Arrays are read as (N, H, W), (N, H, W, C) or
(N, C, H, W) by an explicit rule (``resolve_layout``), never by guessing from the smallest axis.
A ``DataSource`` describes how a dataset was loaded; the run records it (checkpoint metadata
``data``, ``run.json``) and ``load_dataset(source)`` loads the same images again.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

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


# Layouts an image array may be given in; ``auto`` decides by ``resolve_layout``'s rule.
LAYOUTS = ("auto", "nchw", "nhwc", "nhw")
# Channel counts of an image: grey, RGB, RGBA (what the run's plots and Pillow can show).
CHANNELS = (1, 3, 4)
COLORS = ("rgb", "gray")
BINARIZATIONS = ("none", "static", "dynamic")
# The share of the images held out as the test set when a source has no test split of its own
# (an npz with a single ``x``, an image folder without ``train/`` and ``test/``, arrays given
# without ``test``), and the stream of the seeded permutation that draws it.
DEFAULT_TEST_FRACTION = 0.1
SPLIT_STREAM = 11
ARRAYS = "arrays"


@dataclass(frozen=True)
class DataSource:
    """How a dataset was loaded: enough for ``load_dataset`` to load the same images again.

    A run records it (the checkpoint's ``data`` metadata, ``run.json``), as JSON
    (``to_json`` / ``from_json``).

    Attributes:
      spec: ``digits``, ``mnist:DIR`` (also ``fashion-mnist``, ``kmnist``, ``idx``),
        ``npz:FILE``, ``images:DIR``, or ``arrays`` (numpy arrays given from Python: recorded,
        but they cannot be loaded again from the record).
      layout: ``auto`` or the layout the arrays were read in (``nchw``, ``nhwc``, ``nhw``);
        loaders record the layout they resolved. Only npz files and arrays have a choice; the
        other formats fix it and take ``auto``.
      resize: ``(H, W)`` every image of an image folder is resized to (Pillow, bilinear), or
        None: the images must share one size.
      color: ``rgb`` or ``gray``: convert every image of an image folder to it, or None: the
        images must all be grey or all colour.
      test_fraction: the share held out as the test set when the source has no test split
        (None: the source's own split was used; a loader given None uses
        ``DEFAULT_TEST_FRACTION`` where it needs one).
      split_seed: the seed of that held-out draw (``default_rng([split_seed, SPLIT_STREAM])``);
        fixed rather than the run's seed, so runs with different seeds share one test set.
      binarize: how the run binarized the images (``none``, ``static``, ``dynamic``); set by the
        run, not used by loading (the loaders return grey levels).
    """

    spec: str
    layout: str = "auto"
    resize: tuple[int, int] | None = None
    color: str | None = None
    test_fraction: float | None = None
    split_seed: int = 0
    binarize: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec:
            raise DataError(f"DataSource.spec must be a non-empty string, got {self.spec!r}")
        if self.layout not in LAYOUTS:
            raise DataError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.resize is not None:
            size = tuple(self.resize) if isinstance(self.resize, (tuple, list)) else ()
            if len(size) != 2 or not all(_is_int(v) and v >= 1 for v in size):
                raise DataError(
                    f"resize must be (H, W), two positive integers, got {self.resize!r}"
                )
            object.__setattr__(self, "resize", (int(size[0]), int(size[1])))
        if self.color is not None and self.color not in COLORS:
            raise DataError(f"color must be None or one of {COLORS}, got {self.color!r}")
        if self.test_fraction is not None:
            f = self.test_fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
                raise DataError(f"test_fraction must be a number in (0, 1), got {f!r}")
            object.__setattr__(self, "test_fraction", float(f))
        if not _is_int(self.split_seed) or not 0 <= self.split_seed < 2**63:
            raise DataError(f"split_seed must be an integer in [0, 2**63), got {self.split_seed!r}")
        if self.binarize not in BINARIZATIONS:
            raise DataError(f"binarize must be one of {BINARIZATIONS}, got {self.binarize!r}")

    @property
    def kind(self) -> str:
        """The part of ``spec`` before the colon (``npz``, ``images``, ``digits``...)."""
        return self.spec.partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["resize"] = None if self.resize is None else list(self.resize)
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> DataSource:
        """The source ``body`` describes (``to_dict``'s keys; ``spec`` required, the others
        default); ``DataError`` naming an unknown key or a bad value."""
        if not isinstance(body, Mapping):
            raise DataError(f"a data source must be a JSON object, got {type(body).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise DataError(f"a data source has unknown keys {unknown} (known: {sorted(known)})")
        if "spec" not in body:
            raise DataError("a data source needs its 'spec'")
        values = dict(body)
        if isinstance(values.get("resize"), list):
            values["resize"] = tuple(values["resize"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> DataSource:
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError, TypeError) as exc:
            raise DataError(f"a data source must be JSON: {exc}") from None
        return cls.from_dict(body)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Dataset:
    """A train/test split of images.

    Attributes:
      name: how it was specified (e.g. ``"digits"``, ``"fashion-mnist:/data/fmnist"``).
      train, test: float32 arrays (N, C, H, W), C in {1, 3, 4}; values in [0, 1] for every
        loader (uint8 pixels / 255) except float arrays, which keep their values (finite; the
        run checks them against the likelihood, ``validate_images``).
      train_labels, test_labels: int64 arrays (N,), or None for a source without labels (both
        or neither).
      source: how it was loaded (``DataSource``); None for a dataset built by hand.
      classes: the class names the labels index (an image folder's sorted subfolder names), or
        None.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    source: DataSource | None = None
    classes: tuple[str, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)

    @classmethod
    def from_arrays(
        cls,
        train: Any,
        test: Any = None,
        *,
        layout: str = "auto",
        labels: Any = None,
        test_labels: Any = None,
        test_fraction: float = DEFAULT_TEST_FRACTION,
        seed: int = 0,
        name: str = ARRAYS,
    ) -> Dataset:
        """A dataset from numpy arrays, checked like the files the loaders read.

        Args:
          train: images (N, H, W), (N, H, W, C) or (N, C, H, W) (see ``resolve_layout``): uint8
            (scaled by 1/255), bool, integer or floating point (kept as they are, float32);
            complex, object or string arrays are refused. Every value must be finite.
          test: test images in the same layout, or None: ``test_fraction`` of ``train`` is held
            out by a permutation seeded with ``seed`` (``DataSource.split_seed``).
          layout: ``auto``, ``nchw``, ``nhwc`` or ``nhw``.
          labels, test_labels: integer labels (N,) of ``train`` and ``test``, or None (with
            ``test`` given, both or neither).
          name: the dataset's name in messages and in the run's records.

        Returns:
          a ``Dataset`` in (N, C, H, W), whose ``source`` is ``DataSource("arrays", ...)``. A
          float32 (N, C, H, W) array is used as it is (not copied).

        Raises:
          DataError naming the array and its shape or dtype.
        """
        train = np.asarray(train)
        resolved = resolve_layout(train.shape, layout, f"{name} train images")
        train_y = None if labels is None else _labels(np.asarray(labels), f"{name} labels")
        if train_y is not None and len(train_y) != len(train):
            raise DataError(
                f"{name}: {len(train)} train images but {len(train_y)} labels (shape "
                f"{train_y.shape})"
            )
        fraction: float | None = None
        if test is None:
            if test_labels is not None:
                raise DataError(f"{name}: test_labels given without test images")
            fraction = test_fraction
            train_idx, test_idx = held_out(len(train), test_fraction, seed, f"{name} images")
            # Split before the conversion: a uint8 array is indexed, not a float copy of it.
            test, test_y = train[test_idx], None if train_y is None else train_y[test_idx]
            train, train_y = train[train_idx], None if train_y is None else train_y[train_idx]
        else:
            test = np.asarray(test)
            test_y = None
            if test_labels is not None:
                test_y = _labels(np.asarray(test_labels), f"{name} test_labels")
                if len(test_y) != len(test):
                    raise DataError(
                        f"{name}: {len(test)} test images but {len(test_y)} test_labels"
                    )
            if (train_y is None) != (test_y is None):
                raise DataError(
                    f"{name}: give labels for both splits or for neither (labels "
                    f"{'given' if train_y is not None else 'None'}, test_labels "
                    f"{'given' if test_y is not None else 'None'})"
                )
        x = to_nchw(train, resolved, f"{name} train images")
        x_test = to_nchw(test, resolved, f"{name} test images")
        _same_size(x, x_test, f"{name} train images", f"{name} test images")
        return cls(
            name,
            x,
            x_test,
            train_y,
            test_y,
            DataSource(ARRAYS, resolved, test_fraction=fraction, split_seed=seed),
        )


def resolve_layout(shape: tuple[int, ...], layout: str = "auto", what: str = "images") -> str:
    """The layout (``nhw``, ``nchw`` or ``nhwc``) of an image array of ``shape``.

    ``auto``: a 3-D array is (N, H, W); a 4-D array is (N, C, H, W) when axis 1 holds 1, 3 or
    4 (channels) and axis 3 does not, (N, H, W, C) in the opposite case; when both or neither
    do (e.g. (N, 3, 32, 3), (N, 4, 4, 4), (N, 5, 6, 7)) the array is refused: pass the layout.
    The smallest axis is never taken for the channels. A forced ``nchw`` or ``nhwc`` needs a
    4-D array whose channel axis holds 1, 3 or 4; ``nhw`` needs a 3-D array.

    Raises:
      DataError naming ``what``, its shape and the layout option to pass.
    """
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shape = tuple(int(s) for s in shape)
    options = "pass layout='nchw' or layout='nhwc' (vae train --layout nchw|nhwc)"
    if len(shape) == 3:
        if layout in ("auto", "nhw"):
            return "nhw"
        raise DataError(
            f"{what} have shape {shape}, 3-D, but layout {layout!r} needs 4-D arrays; a 3-D "
            "array is (N, H, W) (layout 'nhw' or 'auto')"
        )
    if len(shape) != 4:
        raise DataError(
            f"{what} have shape {shape}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    if layout == "nhw":
        raise DataError(f"{what} have shape {shape}, 4-D, but layout 'nhw' needs 3-D arrays")
    first, last = shape[1] in CHANNELS, shape[3] in CHANNELS
    if layout == "auto":
        if first and not last:
            return "nchw"
        if last and not first:
            return "nhwc"
        why = (
            f"both axis 1 ({shape[1]}) and axis 3 ({shape[3]}) could hold the channels"
            if first
            else f"neither axis 1 ({shape[1]}) nor axis 3 ({shape[3]}) holds 1, 3 or 4 channels"
        )
        raise DataError(
            f"{what} have shape {shape}, an ambiguous layout: {why}; {options}, or give images "
            "with 1, 3 or 4 channels"
        )
    channels = shape[1] if layout == "nchw" else shape[3]
    if channels not in CHANNELS:
        raise DataError(
            f"{what} have shape {shape}: layout {layout!r} puts {channels} channels on axis "
            f"{1 if layout == 'nchw' else 3}, but images have 1, 3 or 4 channels"
        )
    return layout


def to_nchw(x: np.ndarray, layout: str, what: str = "images") -> np.ndarray:
    """``x`` in the resolved ``layout`` as float32 (N, C, H, W), checked like a data file.

    The dtype must be real (bool, integer, unsigned or floating point): uint8 is scaled by
    1/255, the others are cast as they are (so float images keep their values). The array must
    hold at least one image and every value must be finite. One float32 array is made (none
    when ``x`` is float32 (N, C, H, W) already).

    Raises:
      DataError naming ``what`` and its shape or dtype.
    """
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{what} must hold real numbers (uint8 or floating point), got dtype {x.dtype}"
        )
    if resolve_layout(x.shape, layout, what) != layout:
        raise DataError(f"{what} of shape {x.shape} are not in layout {layout!r}")
    if not len(x):
        raise DataError(f"{what} hold no images (shape {x.shape})")
    if layout == "nhw":
        x = x[:, None]
    elif layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    out = np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype == np.uint8:
        out /= np.float32(255.0)
    validate_images(out, None, name=what)
    return out


def _labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DataError(f"{what} must hold integer labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{what} must be 1-D (N,), got shape {y.shape}")
    return y.astype(np.int64)


def _same_size(train: np.ndarray, test: np.ndarray, train_what: str, test_what: str) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{train_what} are {train.shape[1:]} (C, H, W) but {test_what} are "
            f"{test.shape[1:]}; both splits must have one image size"
        )


def held_out(
    n: int, fraction: float | None, seed: int, what: str = "images"
) -> tuple[np.ndarray, np.ndarray]:
    """``(train indices, test indices)`` holding out ``round(n * fraction)`` of ``n`` examples
    (at least one, and at least one left to train on), drawn by the permutation
    ``default_rng([seed, SPLIT_STREAM])``; both in that permutation's order."""
    fraction = DEFAULT_TEST_FRACTION if fraction is None else fraction
    DataSource(ARRAYS, test_fraction=fraction, split_seed=seed)  # checks both values
    if n < 2:
        raise DataError(f"{what}: {n} image(s) cannot be split into a train and a test set")
    n_test = min(max(1, round(n * fraction)), n - 1)
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(n)
    return order[n_test:], order[:n_test]


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
    return Dataset("digits", x[:n], x[n:], y[:n], y[n:], DataSource("digits"))


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
        DataSource(name or f"idx:{directory}"),
    )


def _to_unit(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


# The arrays an npz file may hold, in one of three schemes: Keras' names, plain names, or one
# array split by a seeded held-out fraction. Labels are optional (both splits or neither).
NPZ_SCHEMES = (
    {"images": ("x_train", "x_test"), "labels": ("y_train", "y_test")},
    {"images": ("train", "test"), "labels": ("train_labels", "test_labels")},
    {"images": ("x",), "labels": ("y",)},
)
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
            f"with arrays {list(NPZ_ARRAYS)} (see load_npz)"
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


def _npz_scheme(path: Path, names: list[str]) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """The image keys and (None: no labels) label keys of the scheme the npz's arrays follow."""
    present = set(names)
    matches = [s for s in NPZ_SCHEMES if present & set(s["images"] + s["labels"])]
    listing = "; ".join(
        f"{' + '.join(s['images'])} (labels {' + '.join(s['labels'])})" for s in NPZ_SCHEMES
    )
    if len(matches) != 1:
        found = "none of" if not matches else "arrays of more than one of"
        raise DataError(
            f"{path} holds {found} the recognised sets of arrays: {listing}; it has {sorted(names)}"
        )
    images, labels = matches[0]["images"], matches[0]["labels"]
    unknown = sorted(present - set(images + labels))
    has_labels = bool(present & set(labels))
    missing = [k for k in images if k not in present]
    missing += [k for k in labels if has_labels and k not in present]
    if missing:
        missing.sort(key=NPZ_ARRAYS.index if set(missing) <= set(NPZ_ARRAYS) else None)
        raise DataError(f"{path} lacks arrays {missing} (has {sorted(names)})")
    if unknown:
        raise DataError(
            f"{path} holds arrays {unknown} that are not read (recognised: {listing}); remove "
            "them or save the file without them"
        )
    return images, labels if has_labels else None


def load_npz(
    path: str | os.PathLike,
    layout: str = "auto",
    test_fraction: float | None = None,
    split_seed: int = 0,
) -> Dataset:
    """An npz file of images, with or without labels.

    Arrays, in one of three schemes (anything else in the file is refused, so a misspelt key is
    not silently dropped):
      - ``x_train``, ``x_test`` (Keras' ``mnist.npz``), labels ``y_train``, ``y_test``;
      - ``train``, ``test``, labels ``train_labels``, ``test_labels``;
      - ``x`` alone, labels ``y``: ``test_fraction`` (default ``DEFAULT_TEST_FRACTION``) of it
        is held out as the test set by a permutation seeded with ``split_seed``.
    Labels are optional: both splits' or neither (then the dataset's labels are None).

    Images (N, H, W), (N, H, W, C) or (N, C, H, W) by ``resolve_layout`` (``layout``, decided
    from the first split and applied to both), converted by ``to_nchw``: uint8 scaled to [0, 1],
    other real numbers kept as they are (float32); labels integers. The values are checked here
    only for being finite: whether they suit the likelihood (in [0, 1] for Bernoulli) is checked
    where the model is known (``validate_images`` in ``vae_tools.run``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    arrays = _read_npz(path)
    image_keys, label_keys = _npz_scheme(path, sorted(arrays))
    first = arrays[image_keys[0]]
    resolved = resolve_layout(first.shape, layout, f"{path}:{image_keys[0]}")
    for key in label_keys or ():
        _labels(arrays[key], f"{path}: {key}")
    if label_keys is not None:
        for x_key, y_key in zip(image_keys, label_keys, strict=True):
            x, y = arrays[x_key], arrays[y_key]
            if y.ndim != 1 or x.ndim < 1 or len(x) != len(y):
                raise DataError(
                    f"{path}: {x_key} must be (N, H, W), (N, H, W, C) or (N, C, H, W) and "
                    f"{y_key} (N,), got {x.shape} and {y.shape}"
                )
    for key in image_keys:
        if arrays[key].dtype.kind not in "biuf":
            # Refused before any cast: a cast would drop an imaginary part with only a warning.
            raise DataError(
                f"{path}: {key} must hold real numbers (uint8 or floating point), got dtype "
                f"{arrays[key].dtype}"
            )
        if not len(arrays[key]):
            raise DataError(f"{path}: {key} holds no images")
    fraction = None
    if len(image_keys) == 1:
        # Split before the conversion: a uint8 array is indexed, not a float copy of it.
        key = image_keys[0]
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train_idx, test_idx = held_out(len(arrays[key]), fraction, split_seed, f"{path}: {key}")
        parts = [
            (arrays[key][idx], f"{path}:{key} ({split} split)")
            for idx, split in ((train_idx, "train"), (test_idx, "test"))
        ]
        ys: list[np.ndarray | None] = [None, None]
        if label_keys is not None:
            ys = [arrays[label_keys[0]][train_idx], arrays[label_keys[0]][test_idx]]
    else:
        parts = [(arrays[k], f"{path}:{k}") for k in image_keys]
        ys = [None, None] if label_keys is None else [arrays[k] for k in label_keys]
    images = [to_nchw(x, resolved, what) for x, what in parts]
    labels = [None if y is None else y.astype(np.int64) for y in ys]
    if images[0].shape[1:] != images[1].shape[1:]:
        raise DataError(
            f"{path}: {image_keys[0]} images are {images[0].shape[1:]} (C, H, W) but "
            f"{image_keys[-1]} images are {images[1].shape[1:]}; both splits must have one "
            "image size"
        )
    source = DataSource(f"npz:{path}", resolved, test_fraction=fraction, split_seed=split_seed)
    return Dataset(f"npz:{path}", images[0], images[1], labels[0], labels[1], source)


DATASET_SPECS = "digits, mnist:DIR, fashion-mnist:DIR, kmnist:DIR, idx:DIR, npz:FILE or images:DIR"


def load_dataset(
    spec: str | DataSource,
    *,
    layout: str = "auto",
    resize: tuple[int, int] | None = None,
    color: str | None = None,
    test_fraction: float | None = None,
    split_seed: int = 0,
) -> Dataset:
    """Load a dataset from a spec string, or again from the ``DataSource`` a run recorded.

    Specs: ``digits`` (bundled default); ``mnist:DIR``, ``fashion-mnist:DIR``, ``kmnist:DIR``
    or ``idx:DIR`` (the four standard IDX files); ``npz:FILE`` (``load_npz``); ``images:DIR``
    (a folder of PNG or JPEG files, ``vae_common.images.load_image_dir``).

    Options (with a ``DataSource``, its own fields are used and these must stay at their
    defaults): ``layout`` for npz files; ``resize`` ``(H, W)`` and ``color`` (``rgb`` or
    ``gray``) for image folders; ``test_fraction`` and ``split_seed`` for a source without a
    test split. An option the source's format does not take is refused.

    Returns:
      the ``Dataset``, its ``source`` recording the resolved layout and the options used.
    """
    if isinstance(spec, DataSource):
        if (layout, resize, color, test_fraction, split_seed) != ("auto", None, None, None, 0):
            raise DataError("give the options in the DataSource, not beside it")
        source = spec
    elif isinstance(spec, str):
        if spec == "" or spec.partition(":")[1] and not spec.partition(":")[2]:
            raise DataError(f"unknown dataset {spec!r}; use {DATASET_SPECS}")
        source = DataSource(spec, layout, resize, color, test_fraction, split_seed)
    else:
        raise DataError(f"a dataset is a spec string or a DataSource, got {type(spec).__name__}")
    text = source.spec
    if text == ARRAYS:
        raise DataError(
            "the dataset was given from Python as numpy arrays (data source 'arrays'); it "
            "cannot be loaded from the record: pass the arrays again (Dataset.from_arrays)"
        )
    kind, sep, arg = text.partition(":")
    if text != "digits" and (not sep or not arg):
        raise DataError(f"unknown dataset {text!r}; use {DATASET_SPECS}")
    if text != "digits" and kind not in (*IDX_DATASETS, "npz", "images"):
        raise DataError(f"unknown dataset kind {kind!r} in {text!r}; use {DATASET_SPECS}")
    _refuse_options(source, kind)
    if text == "digits":
        return load_digits()
    if kind in IDX_DATASETS:
        return load_idx_dir(arg, name=text)
    if kind == "npz":
        return load_npz(arg, source.layout, source.test_fraction, source.split_seed)
    from vae_common.images import load_image_dir

    return load_image_dir(
        arg,
        resize=source.resize,
        color=source.color,
        test_fraction=source.test_fraction,
        split_seed=source.split_seed,
        name=text,
    )


def _refuse_options(source: DataSource, kind: str) -> None:
    """``DataError`` naming each option that this ``kind`` of source does not take."""
    given = []
    if source.layout != "auto" and kind != "npz":
        given.append(f"layout {source.layout!r} (npz files and arrays only)")
    if source.resize is not None and kind != "images":
        given.append("resize (image folders only: images:DIR)")
    if source.color is not None and kind != "images":
        given.append("color (image folders only: images:DIR)")
    if source.test_fraction is not None and kind not in ("npz", "images"):
        given.append("test_fraction (npz files and image folders only)")
    if given:
        raise DataError(f"dataset {source.spec!r} does not take {'; '.join(given)}")


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

    A permutation drawn from ``(seed, epoch)`` (or the identity when ``shuffle`` is False), cut
    into full batches, so every step of an epoch has the same shape (one compiled step, one
    ``lax.scan``). The ``n % batch_size`` examples left over are ``last_batch_indices``. Both
    backends use this.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if n < batch_size:
        raise DataError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
    steps = n // batch_size
    return _epoch_order(n, seed, epoch, shuffle)[: steps * batch_size].reshape(steps, batch_size)


def last_batch_indices(
    n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> np.ndarray:
    """The indices ``batch_indices`` leaves out: the last ``n % batch_size`` of the epoch's
    permutation, shape (n % batch_size,), empty when the batches cover the data.

    ``vae train`` runs them as one more, smaller step after the epoch's full batches (unless
    ``--drop-last``), so every example is used once per epoch.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if n < batch_size:
        raise DataError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
    return _epoch_order(n, seed, epoch, shuffle)[(n // batch_size) * batch_size :]


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


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
