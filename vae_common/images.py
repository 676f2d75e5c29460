"""A folder of PNG or JPEG images as a ``Dataset`` (``images:DIR``), read with Pillow.

Layout of the folder:
  - ``DIR/train/`` and ``DIR/test/``: the two splits, each as below; otherwise ``DIR`` itself is
    one set of images, of which ``test_fraction`` is held out as the test set (seeded,
    ``vae_common.datasets.held_out``).
  - A set of images is either flat (image files, no labels) or one subfolder per class holding
    image files (labels: the index of the folder's name among the sorted names, the names in
    ``Dataset.classes``). The test split's classes must be among the train split's.
  - Files ending in ``.png``, ``.jpg`` or ``.jpeg`` (any case) are images; other files and names
    starting with a dot are ignored. A folder holding both images and subfolders is refused.

Every file is opened once for its size and mode before any is decoded: the images must share one
size unless ``resize`` is given, and be all grey (modes 1, L, LA) or all colour (RGB, RGBA, P,
PA, CMYK, YCbCr) unless ``color`` converts them; the whole dataset, N * C * H * W bytes, must
fit in ``vae_common.datasets.MAX_DATA_BYTES``, the limit of one IDX file. Alpha is dropped (RGBA is
read as RGB, LA as L); 16-bit and float images are refused. Each image is then decoded straight
into the float32 (N, C, H, W) array of its split (pixels / 255): one float copy, no other; or,
with ``keep_uint8``, into a uint8 (N, C, H, W) array of the pixels themselves.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vae_common.datasets import MAX_DATA_BYTES, Dataset, held_out
from vae_common.errors import DataError
from vae_common.sources import DEFAULT_TEST_FRACTION, DataSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow's decoders tried on a file (a .png holding another format is refused, not guessed).
FORMATS = ("PNG", "JPEG")  # a multi-picture JPEG (MPO) opens through the JPEG plugin
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr")
# Pillow's mode to convert to, per number of channels.
TARGET_MODE = {1: "L", 3: "RGB"}
# The errors Pillow raises on a damaged file: OSError (UnidentifiedImageError, "image file is
# truncated"), SyntaxError ("broken PNG file"), and what its decoders let through.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)


@dataclass(frozen=True)
class _Image:
    path: Path
    label: int | None
    size: tuple[int, int]  # (H, W)
    mode: str


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list image folder {directory}: {exc.strerror or exc}") from None


def _collect(directory: Path) -> tuple[list[tuple[Path, str | None]], bool]:
    """``([(file, class name or None)], has classes)`` of one set of images."""
    entries = _entries(directory)
    files = [p for p in entries if _is_image(p)]
    folders = [p for p in entries if p.is_dir()]
    if files and folders:
        raise DataError(
            f"image folder {directory} holds both image files (e.g. {files[0].name}) and "
            f"folders (e.g. {folders[0].name}/): use one subfolder per class, or only files"
        )
    if files:
        return [(p, None) for p in files], False
    found: list[tuple[Path, str | None]] = []
    for folder in folders:
        inner = _entries(folder)
        nested = [p for p in inner if p.is_dir()]
        if nested:
            raise DataError(
                f"class folder {folder} holds a folder ({nested[0].name}/); one level of class "
                "folders is read"
            )
        images = [p for p in inner if _is_image(p)]
        if not images:
            raise DataError(f"class folder {folder} holds no PNG or JPEG images")
        found += [(p, folder.name) for p in images]
    if not found:
        raise DataError(f"image folder {directory} holds no PNG or JPEG images")
    return found, True


def _probe(path: Path, label: int | None) -> _Image:
    """The size and mode of one image file, read from its header (nothing is decoded)."""
    from PIL import Image

    try:
        with Image.open(path, formats=FORMATS) as im:
            width, height = im.size
            mode = im.mode
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is too large to decode: {exc}") from None
    except DECODE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if mode not in GREY_MODES + COLOUR_MODES:
        raise DataError(
            f"image {path} has mode {mode}; 8-bit grey or colour images are read (save it as "
            "8-bit L or RGB)"
        )
    return _Image(path, label, (height, width), mode)


def _decode(image: _Image, mode: str, size: tuple[int, int], out: np.ndarray) -> None:
    """Decode ``image`` as ``mode`` (L or RGB) at ``size`` (H, W) into ``out`` (C, H, W):
    float32 pixels / 255, or the uint8 pixels themselves."""
    from PIL import Image

    try:
        with Image.open(image.path, formats=FORMATS) as im:
            converted = im.convert(mode)
            if converted.size != (size[1], size[0]):
                converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {image.path} is too large to decode: {exc}") from None
    except DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {image.path}: {exc}") from None
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if out.dtype == np.uint8:
        out[...] = chw
    else:
        np.divide(chw, np.float32(255.0), out=out, dtype=np.float32)


def _channels(images: list[_Image], color: str | None, directory: Path) -> int:
    if color is not None:
        return 3 if color == "rgb" else 1
    grey = next((im for im in images if im.mode in GREY_MODES), None)
    colour = next((im for im in images if im.mode in COLOUR_MODES), None)
    if grey is not None and colour is not None:
        raise DataError(
            f"images:{directory} mixes grey and colour images ({grey.path} is {grey.mode}, "
            f"{colour.path} is {colour.mode}); pass --color gray or --color rgb (color= in "
            "Python) to convert them all"
        )
    return 1 if grey is not None else 3


def _size(images: list[_Image], resize: tuple[int, int] | None, directory: Path) -> tuple[int, int]:
    if resize is not None:
        return resize
    first = images[0]
    other = next((im for im in images if im.size != first.size), None)
    if other is not None:
        h, w = first.size
        oh, ow = other.size
        raise DataError(
            f"images:{directory} holds images of different sizes ({first.path} is {h}x{w}, "
            f"{other.path} is {oh}x{ow}, H x W); pass --resize H,W (resize=(H, W) in Python) "
            "to resize them all"
        )
    return first.size


def load_image_dir(
    directory: str | os.PathLike,
    resize: tuple[int, int] | None = None,
    color: str | None = None,
    test_fraction: float | None = None,
    split_seed: int = 0,
    name: str | None = None,
    max_bytes: int = MAX_DATA_BYTES,
    keep_uint8: bool = False,
) -> Dataset:
    """The images of ``directory`` (see the module docstring for its layout).

    Args:
      resize: ``(H, W)`` to resize every image to (Pillow, bilinear; the aspect ratio is not
        kept), or None: all images must share one size.
      color: ``"rgb"`` or ``"gray"`` to convert every image to (Pillow's ``convert``; grey is
        ITU-R 601-2 luma), or None: all grey (C = 1) or all colour (C = 3).
      test_fraction, split_seed: the held-out test set when there is no ``test/`` folder.
      max_bytes: the limit on N * C * H * W, checked before any image is decoded.
      keep_uint8: give the uint8 pixels (N, C, H, W) instead of float32 pixels / 255.

    Returns:
      a ``Dataset`` of float32 (N, C, H, W) images in [0, 1] (uint8 with ``keep_uint8``);
      labels (and ``classes``) when the images are in class folders, else None; ``source``
      records the options.

    Raises:
      DataError naming the folder, or the file at fault (unreadable, corrupt, another format, a
      second size or colour mode, too large).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"image folder {directory} does not exist")
    source = DataSource(
        name or f"images:{directory}",
        resize=resize,
        color=color,
        test_fraction=test_fraction,
        split_seed=split_seed,
    )
    split_dirs = [directory / "train", directory / "test"]
    has_splits = [d.is_dir() for d in split_dirs]
    if any(has_splits) and not all(has_splits):
        have, lack = (split_dirs[0], split_dirs[1]) if has_splits[0] else split_dirs[::-1]
        raise DataError(
            f"image folder {directory} has {have.name}/ but no {lack.name}/: give both splits, "
            "or neither (a fraction of the images is then held out as the test set)"
        )
    if all(has_splits):
        sets = [_collect(d) for d in split_dirs]
        if sets[0][1] != sets[1][1]:
            flat = split_dirs[1] if sets[0][1] else split_dirs[0]
            raise DataError(
                f"{flat} holds image files but the other split holds class folders; both "
                "splits need the same form"
            )
        files = sets[0][0] + sets[1][0]
        n_train = len(sets[0][0])
        has_classes = sets[0][1]
        classes = sorted({c for _, c in sets[0][0] if c is not None})
        unknown = sorted({c for _, c in sets[1][0] if c is not None} - set(classes))
        if unknown:
            raise DataError(
                f"{split_dirs[1]} has classes {unknown} that {split_dirs[0]} does not have"
            )
        source = replace(source, test_fraction=None)
    else:
        files, has_classes = _collect(directory)
        classes = sorted({c for _, c in files if c is not None})
        n_train = 0
    index = {c: i for i, c in enumerate(classes)}
    images = [_probe(p, None if c is None else index[c]) for p, c in files]
    channels = _channels(images, source.color, directory)
    height, width = _size(images, source.resize, directory)
    total = len(images) * channels * height * width
    if total > max_bytes:
        raise DataError(
            f"images:{directory}: {len(images)} images of {channels}x{height}x{width} are "
            f"{total} bytes, more than the {max_bytes}-byte limit for one dataset "
            "(vae_common.data.MAX_DATA_BYTES); pass --resize to make them smaller"
        )
    if all(has_splits):
        train_idx, test_idx = np.arange(n_train), np.arange(n_train, len(images))
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train_idx, test_idx = held_out(len(images), fraction, split_seed, f"images:{directory}")
        source = replace(source, test_fraction=fraction)
    mode = TARGET_MODE[channels]
    splits = []
    for idx in (train_idx, test_idx):
        x = np.empty((len(idx), channels, height, width), np.uint8 if keep_uint8 else np.float32)
        for row, i in enumerate(idx):
            _decode(images[i], mode, (height, width), x[row])
        labels = None
        if has_classes:
            labels = np.array([images[i].label for i in idx], dtype=np.int64)
        splits.append((x, labels))
    (train, train_y), (test, test_y) = splits
    return Dataset(
        source.spec,
        train,
        test,
        train_y,
        test_y,
        source,
        tuple(classes) if has_classes else None,
    )


__all__ = ["load_image_dir"]
