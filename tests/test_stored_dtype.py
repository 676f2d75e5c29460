"""``keep_uint8``: the loaders give a source's stored uint8 pixels (N, C, H, W) without a float
copy, and those pixels mean exactly the float32 images the default path makes (k / 255, the
float32 division: ``vae_common.streaming.UINT8_VALUES``, the table the trainers use on the
device). The references are numpy's own: the written pixels, and ``np.float32(k) /
np.float32(255)`` for each k.
"""

from __future__ import annotations

import numpy as np
import pytest
from idx_files import write_idx_dir

from vae_common.data import Dataset, float_images, load_dataset
from vae_common.idx import IDX_FILES, read_idx
from vae_common.streaming import UINT8_VALUES


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_float_images_is_the_float32_division_and_the_device_table():
    k = np.arange(256, dtype=np.uint8)
    want = np.array([np.float32(v) / np.float32(255.0) for v in range(256)], np.float32)
    assert same_bits(float_images(k), want)
    assert same_bits(UINT8_VALUES, want)
    # The ends are exact and the values rise.
    assert want[0] == 0.0 and want[255] == 1.0 and np.all(np.diff(want) > 0)
    # A float array is returned as it is.
    x = np.zeros((2, 1, 3, 3), np.float32)
    assert float_images(x) is x


def check_pair(kept: Dataset, default: Dataset) -> None:
    assert kept.train.dtype == kept.test.dtype == np.uint8
    assert default.train.dtype == default.test.dtype == np.float32
    for got, want in ((kept.train, default.train), (kept.test, default.test)):
        assert got.shape == want.shape and got.ndim == 4
        assert same_bits(UINT8_VALUES[got], want)
        assert same_bits(got.astype(np.float32) / np.float32(255.0), want)
    assert same_bits(kept.as_float().train, default.train)
    assert same_bits(kept.as_float().test, default.test)
    assert kept.source == default.source and kept.name == default.name
    for a, b in (
        (kept.train_labels, default.train_labels),
        (kept.test_labels, default.test_labels),
    ):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_idx_files_keep_their_uint8_pixels(tmp_path):
    directory = write_idx_dir(tmp_path / "idx", 9, 4, size=5, seed=3)
    kept = load_dataset(f"idx:{directory}", keep_uint8=True)
    default = load_dataset(f"idx:{directory}")
    check_pair(kept, default)
    stored = read_idx(directory / IDX_FILES["train_images"])
    assert np.array_equal(kept.train[:, 0], stored)
    # Again from the recorded source.
    again = load_dataset(kept.source, keep_uint8=True)
    assert same_bits(again.train, kept.train)
    assert load_dataset("digits", keep_uint8=True).train.dtype == np.float32


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_uint8_npz_arrays_keep_their_pixels(tmp_path, layout):
    rng = np.random.default_rng(5)
    shape = {"nhw": (10, 5, 6), "nhwc": (10, 5, 6, 3), "nchw": (10, 3, 5, 6)}[layout]
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.npz"
    np.savez(path, x=x)
    kept = load_dataset(f"npz:{path}", keep_uint8=True)
    default = load_dataset(f"npz:{path}")
    check_pair(kept, default)
    # The pixels themselves, in (N, C, H, W), train and test from the one seeded split.
    nchw = x[:, None] if layout == "nhw" else x.transpose(0, 3, 1, 2) if layout == "nhwc" else x
    assert sorted(map(bytes, np.concatenate([kept.train, kept.test]))) == sorted(map(bytes, nchw))


def test_float_npz_arrays_stay_float32(tmp_path):
    x = np.random.default_rng(1).random((6, 1, 5, 5))
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x, x_test=x[:2])
    ds = load_dataset(f"npz:{path}", keep_uint8=True)
    assert ds.train.dtype == np.float32 and np.array_equal(ds.train, x.astype(np.float32))
    assert ds.as_float() is ds


def test_image_folders_keep_their_uint8_pixels(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    pixels = {}
    for split, n in (("train", 5), ("test", 2)):
        for i in range(n):
            folder = tmp_path / "img" / split / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            x = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
            Image.fromarray(x).save(folder / f"{i}.png")
            pixels[(split, folder.name, i)] = x
    kept = load_dataset(f"images:{tmp_path / 'img'}", keep_uint8=True)
    default = load_dataset(f"images:{tmp_path / 'img'}")
    check_pair(kept, default)
    assert kept.classes == ("a", "b")
    # The files in sorted order: class a (1, 3), then b (0, 2, 4).
    want = [pixels[("train", c, i)].transpose(2, 0, 1) for c, i in (("a", 1), ("a", 3))]
    want += [pixels[("train", "b", i)].transpose(2, 0, 1) for i in (0, 2, 4)]
    assert np.array_equal(kept.train, np.stack(want))


def test_arrays_from_python_keep_uint8_and_are_not_copied():
    x = np.random.default_rng(4).integers(0, 256, (8, 1, 5, 5), dtype=np.uint8)
    kept = Dataset.from_arrays(x, x[:3], keep_uint8=True)
    default = Dataset.from_arrays(x, x[:3])
    check_pair(kept, default)
    assert np.shares_memory(kept.train, x)
