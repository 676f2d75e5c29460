"""npz files of images (``npz:FILE``): the three recognised schemes of arrays, read without
pickles and within the size limit of one data file, as a ``Dataset`` (``load_npz``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from vae_common.datasets import MAX_DATA_BYTES, Dataset, check_labels, held_out
from vae_common.errors import DataError
from vae_common.layout import resolve_layout, to_nchw
from vae_common.sources import DEFAULT_TEST_FRACTION, DataSource

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
    keep_uint8: bool = False,
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
    other real numbers kept as they are (float32); with ``keep_uint8``, uint8 images stay uint8
    (N, C, H, W) (pixel k means k / 255); labels integers. The values are checked here
    only for being finite: whether they suit the likelihood (in [0, 1] for Bernoulli) is checked
    where the model is known (``validate_images`` in ``vae_tools.run_data`` and
    ``vae_tools.run_eval``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    arrays = _read_npz(path)
    image_keys, label_keys = _npz_scheme(path, sorted(arrays))
    first = arrays[image_keys[0]]
    resolved = resolve_layout(first.shape, layout, f"{path}:{image_keys[0]}")
    for key in label_keys or ():
        check_labels(arrays[key], f"{path}: {key}")
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
    images = [to_nchw(x, resolved, what, keep_uint8) for x, what in parts]
    labels = [None if y is None else y.astype(np.int64) for y in ys]
    if images[0].shape[1:] != images[1].shape[1:]:
        raise DataError(
            f"{path}: {image_keys[0]} images are {images[0].shape[1:]} (C, H, W) but "
            f"{image_keys[-1]} images are {images[1].shape[1:]}; both splits must have one "
            "image size"
        )
    source = DataSource(f"npz:{path}", resolved, test_fraction=fraction, split_seed=split_seed)
    return Dataset(f"npz:{path}", images[0], images[1], labels[0], labels[1], source)
