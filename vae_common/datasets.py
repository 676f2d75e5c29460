"""``Dataset``, a train/test split of float32 (N, C, H, W) images, or of their stored uint8 pixels
(``Dataset.from_arrays`` for numpy arrays; ``Dataset.as_float`` for the float32 images), and
what every loader shares: the seeded held-out test split (``held_out``), the label check and
the size limit of one data file (``MAX_DATA_BYTES``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vae_common.errors import DataError
from vae_common.layout import float_images, resolve_layout, to_nchw
from vae_common.sources import ARRAYS, DEFAULT_TEST_FRACTION, SPLIT_STREAM, DataSource

# The largest array a data file may declare, in bytes (2 GiB; Fashion-MNIST's largest file holds
# 47 MB). A header (IDX) or a zip entry (npz) declaring more is refused before anything is read,
# and no read goes past the declared size: a small gzip or zip file cannot expand to fill memory.
MAX_DATA_BYTES = 1 << 31


@dataclass(frozen=True)
class Dataset:
    """A train/test split of images.

    Attributes:
      name: how it was specified (e.g. ``"digits"``, ``"fashion-mnist:/data/fmnist"``).
      train, test: float32 arrays (N, C, H, W), C in {1, 3, 4}; values in [0, 1] for every
        loader (uint8 pixels / 255) except float arrays, which keep their values (finite; the
        run checks them against the likelihood, ``validate_images``). Loaded with
        ``keep_uint8`` (``vae_common.data.load_dataset``), a source stored as uint8 gives uint8
        arrays (N, C, H, W) instead: pixel k means k / 255, the float32 value ``as_float``
        (``vae_common.layout.float_images``) makes.
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

    def as_float(self) -> Dataset:
        """This dataset with float32 images: uint8 splits become k / 255
        (``vae_common.layout.float_images``, the values the loaders make without
        ``keep_uint8``); itself when both splits are float already."""
        if self.train.dtype != np.uint8 and self.test.dtype != np.uint8:
            return self
        return replace(self, train=float_images(self.train), test=float_images(self.test))

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
        keep_uint8: bool = False,
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
          keep_uint8: uint8 images stay uint8 (N, C, H, W) (``vae_common.layout.to_nchw``); a
            split of another dtype is converted as always.

        Returns:
          a ``Dataset`` in (N, C, H, W), whose ``source`` is ``DataSource("arrays", ...)``. A
          float32 (N, C, H, W) array is used as it is (not copied), and so is a uint8 one with
          ``keep_uint8``.

        Raises:
          DataError naming the array and its shape or dtype.
        """
        train = np.asarray(train)
        resolved = resolve_layout(train.shape, layout, f"{name} train images")
        train_y = None if labels is None else check_labels(np.asarray(labels), f"{name} labels")
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
                test_y = check_labels(np.asarray(test_labels), f"{name} test_labels")
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
        x = to_nchw(train, resolved, f"{name} train images", keep_uint8)
        x_test = to_nchw(test, resolved, f"{name} test images", keep_uint8)
        _same_size(x, x_test, f"{name} train images", f"{name} test images")
        return cls(
            name,
            x,
            x_test,
            train_y,
            test_y,
            DataSource(ARRAYS, resolved, test_fraction=fraction, split_seed=seed),
        )


def check_labels(y: np.ndarray, what: str) -> np.ndarray:
    """``y`` as int64 labels (N,); ``DataError`` naming ``what`` unless ``y`` is a 1-D
    integer array."""
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
