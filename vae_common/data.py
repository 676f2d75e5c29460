"""Datasets, in numpy only: ``load_dataset``, the one entry point for every source, and the
bundled digits.

Images are float32 arrays of shape (N, C, H, W), C in {1, 3, 4}, or with ``keep_uint8`` the
stored uint8 pixels of a source that stores them (``Dataset.as_float`` converts). Sources:
``digits``, IDX directories (``vae_common.idx``), ``npz:FILE`` (``vae_common.npz``), ``images:DIR``
(``vae_common.images``, read with Pillow) and numpy arrays from Python (``Dataset.from_arrays``,
``vae_common.datasets``). Arrays are read as (N, H, W), (N, H, W, C) or (N, C, H, W) by an
explicit rule (``vae_common.layout.resolve_layout``), never by guessing from the smallest axis.
A ``DataSource`` (``vae_common.sources``) describes how a dataset was loaded; the run records it
(checkpoint metadata ``data``, ``run.json``) and ``load_dataset(source)`` loads the same images
again. Both backends consume the same index arrays from ``batch_indices``
(``vae_common.batches``), so for one seed they see the same batches in the same order.

The public names of those modules are importable from here too.
"""

from __future__ import annotations

import numpy as np

from vae_common.batches import (
    batch_indices,
    binarize,
    check_batches,
    last_batch_indices,
    standard_normal,
)
from vae_common.datasets import MAX_DATA_BYTES, Dataset, held_out
from vae_common.errors import DataError
from vae_common.idx import IDX_DATASETS, IDX_FILES, IDX_MAGIC, load_idx_dir, read_idx
from vae_common.layout import CHANNELS, float_images, resolve_layout, to_nchw, validate_images
from vae_common.npz import NPZ_ARRAYS, NPZ_SCHEMES, load_npz
from vae_common.sources import (
    ARRAYS,
    BINARIZATIONS,
    COLORS,
    DEFAULT_TEST_FRACTION,
    LAYOUTS,
    SPLIT_STREAM,
    DataSource,
)

__all__ = [
    "ARRAYS",
    "BINARIZATIONS",
    "CHANNELS",
    "COLORS",
    "DATASET_SPECS",
    "DEFAULT_TEST_FRACTION",
    "DIGITS_TEST_SIZE",
    "IDX_DATASETS",
    "IDX_FILES",
    "IDX_MAGIC",
    "LAYOUTS",
    "MAX_DATA_BYTES",
    "NPZ_ARRAYS",
    "NPZ_SCHEMES",
    "SPLIT_STREAM",
    "DataError",
    "DataSource",
    "Dataset",
    "batch_indices",
    "binarize",
    "float_images",
    "check_batches",
    "held_out",
    "last_batch_indices",
    "load_dataset",
    "load_digits",
    "load_idx_dir",
    "load_npz",
    "read_idx",
    "resolve_layout",
    "standard_normal",
    "to_nchw",
    "validate_images",
]

DIGITS_TEST_SIZE = 297


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


DATASET_SPECS = "digits, mnist:DIR, fashion-mnist:DIR, kmnist:DIR, idx:DIR, npz:FILE or images:DIR"


def load_dataset(
    spec: str | DataSource,
    *,
    layout: str = "auto",
    resize: tuple[int, int] | None = None,
    color: str | None = None,
    test_fraction: float | None = None,
    split_seed: int = 0,
    keep_uint8: bool = False,
) -> Dataset:
    """Load a dataset from a spec string, or again from the ``DataSource`` a run recorded.

    Specs: ``digits`` (bundled default); ``mnist:DIR``, ``fashion-mnist:DIR``, ``kmnist:DIR``
    or ``idx:DIR`` (the four standard IDX files); ``npz:FILE`` (``load_npz``); ``images:DIR``
    (a folder of PNG or JPEG files, ``vae_common.images.load_image_dir``).

    Options (with a ``DataSource``, its own fields are used and these must stay at their
    defaults): ``layout`` for npz files; ``resize`` ``(H, W)`` and ``color`` (``rgb`` or
    ``gray``) for image folders; ``test_fraction`` and ``split_seed`` for a source without a
    test split. An option the source's format does not take is refused.

    ``keep_uint8`` (with a ``DataSource`` too: it changes how the images are held, not which):
    a source that stores uint8 pixels (IDX files, uint8 npz arrays, image folders) gives them
    as uint8 (N, C, H, W), pixel k meaning the float32 k / 255 the default gives
    (``Dataset.as_float``), with no float copy made; float sources (``digits``, float npz
    arrays) give float32 as always.

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
        return load_idx_dir(arg, name=text, keep_uint8=keep_uint8)
    if kind == "npz":
        return load_npz(
            arg, source.layout, source.test_fraction, source.split_seed, keep_uint8=keep_uint8
        )
    from vae_common.images import load_image_dir

    return load_image_dir(
        arg,
        resize=source.resize,
        color=source.color,
        test_fraction=source.test_fraction,
        split_seed=source.split_seed,
        name=text,
        keep_uint8=keep_uint8,
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
