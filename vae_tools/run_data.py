"""The images of a training run: loaded and validated, binarized by the run's protocol, and split
into training, validation and test sets (``prepare_data``, then ``run_data``).

- A validation split (``RunSettings.val_split`` examples, chosen by
  ``default_rng([seed, VAL_SPLIT_STREAM]).permutation``) is held out of the training set; both
  keep the dataset's order.
- Training and evaluation see the same binarization. ``static``: the training and test images
  are binarized once, by one draw of ``default_rng([seed, STATIC_STREAM])`` (training set first).
  ``dynamic``: every training batch is drawn afresh on the device; the test images are
  binarized once by ``default_rng([seed, TEST_BINARIZE_STREAM])`` and the validation images by
  ``default_rng([seed, VAL_BINARIZE_STREAM])`` (``vae_common.data.binarize``), so the held-out
  figures are of binary images, and ``vae eval`` redraws exactly those from the checkpoint's
  recorded binarization and seed (``evaluation_images``).
- A streamed run (``prepare_data(..., keep_uint8=True)``) keeps the training images of a source
  stored as uint8 in uint8 (``vae_common.data.load_dataset(..., keep_uint8=True)``): each batch
  becomes float k / 255 on the device, the values the float32 path holds. Static binarization
  draws from the float images, so a statically binarized run holds float32 training images.
  The validation and test images are float32 in every case.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vae_common.data import Dataset, binarize, float_images, load_dataset, validate_images
from vae_common.errors import DataError
from vae_common.training import TrainConfig
from vae_tools.run_state import RunSettings

BINARIZATIONS = ("none", "static", "dynamic")
# Streams of ``default_rng([seed, stream])`` (see the module docstring).
VAL_SPLIT_STREAM = 6
STATIC_STREAM = 7
TEST_BINARIZE_STREAM = 8
VAL_BINARIZE_STREAM = 9


def binarization(train: TrainConfig, settings: RunSettings) -> str:
    """``"none"``, ``"static"`` or ``"dynamic"``: how the run binarizes its images."""
    if settings.static_binarize:
        return "static"
    return "dynamic" if train.binarize == "dynamic" else "none"


def prepare_data(
    settings: RunSettings, dataset: Dataset | None, likelihood: str, keep_uint8: bool = False
) -> Dataset:
    """Load, validate and (statically) binarize the data of a run: with
    ``settings.static_binarize`` the training and then the test images are binarized by one
    draw of ``default_rng([seed, STATIC_STREAM])``.

    The test images are float32; so are the training images, unless ``keep_uint8`` and the
    run does not binarize statically: then a source stored as uint8 (or a given ``dataset``
    holding uint8) keeps its uint8 training pixels (N, C, H, W), which mean the float32 k / 255
    (``vae_common.data.float_images``) and always suit the likelihood.
    """
    keep = keep_uint8 and not settings.static_binarize
    ds = dataset if dataset is not None else load_dataset(settings.dataset, keep_uint8=keep)
    ds = replace(ds, test=float_images(ds.test)) if keep else ds.as_float()
    if ds.train.dtype != np.uint8:
        validate_images(ds.train, likelihood, name=f"{ds.name} train images")
    validate_images(ds.test, likelihood, name=f"{ds.name} test images")
    if settings.static_binarize:
        rng = np.random.default_rng([settings.seed, STATIC_STREAM])
        train = binarize(ds.train, rng)
        ds = replace(ds, train=train, test=binarize(ds.test, rng))
    return ds


@dataclass(frozen=True)
class RunData:
    """The images of a run, as its steps and its evaluations see them.

    Attributes:
      name: the dataset's name.
      train: the training images (N, C, H, W): grey levels for dynamic binarization (each
        batch is drawn on the device), binary for static; float32, or the stored uint8 pixels
        (k meaning k / 255) of a streamed run (``prepare_data``'s ``keep_uint8``).
      val, val_labels: the validation images (binarized once unless ``none``) and labels, or
        None without a validation split.
      test, test_labels: the test images (binarized once unless ``none``) and labels.
      Labels are None for a dataset without them.
    """

    name: str
    train: np.ndarray
    train_labels: np.ndarray | None
    val: np.ndarray | None
    val_labels: np.ndarray | None
    test: np.ndarray
    test_labels: np.ndarray | None


def evaluation_images(x: np.ndarray, mode: str, seed: int, stream: int) -> np.ndarray:
    """Held-out images as a run evaluates them: ``x`` itself, or for ``mode == "dynamic"`` one
    fixed draw of ``binarize(x, default_rng([seed, stream]))`` (the test set: stream
    ``TEST_BINARIZE_STREAM``; the validation set: ``VAL_BINARIZE_STREAM``). Static images are
    binarized already (``prepare_data``)."""
    if mode == "dynamic":
        return binarize(x, np.random.default_rng([seed, stream]))
    return x


def run_data(settings: RunSettings, ds: Dataset, mode: str) -> RunData:
    """Split the validation set off ``ds`` (prepared by ``prepare_data``) and binarize the
    held-out images by the protocol of ``mode`` (see the module docstring).

    Raises:
      DataError: the validation split leaves fewer training examples than one batch.
    """
    n = len(ds.train)
    val_split = settings.val_split
    if val_split >= n or n - val_split < settings.batch_size:
        raise DataError(
            f"--val-split {val_split} leaves {max(n - val_split, 0)} of the {n} training "
            f"examples of {ds.name}, fewer than one batch of {settings.batch_size}"
        )
    val = val_labels = None
    train, train_labels = ds.train, ds.train_labels
    if val_split:
        order = np.random.default_rng([settings.seed, VAL_SPLIT_STREAM]).permutation(n)
        held = np.zeros(n, bool)
        held[order[:val_split]] = True
        train = ds.train[~held]
        train_labels = None if ds.train_labels is None else ds.train_labels[~held]
        val = evaluation_images(
            float_images(ds.train[held]), mode, settings.seed, VAL_BINARIZE_STREAM
        )
        val_labels = None if ds.train_labels is None else ds.train_labels[held]
    test = evaluation_images(ds.test, mode, settings.seed, TEST_BINARIZE_STREAM)
    return RunData(ds.name, train, train_labels, val, val_labels, test, ds.test_labels)
