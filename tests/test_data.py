"""Datasets, validation, binarization and batching; IDX files are written here, never downloaded."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from vae_common import data
from vae_common.data import (
    DataError,
    batch_indices,
    binarize,
    load_dataset,
    read_idx,
    standard_normal,
    validate_images,
)

STEMS = data.IDX_FILES


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, n, rows, cols))
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    header = b"".join(int(v).to_bytes(4, "big") for v in (2049, len(labels)))
    return header + labels.astype(np.uint8).tobytes()


def make_split(rng, n, rows=5, cols=4):
    images = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
    return images, rng.integers(0, 10, n, dtype=np.uint8)


def write_idx_dir(directory, gz=False, n_train=7, n_test=3, seed=0):
    """The four standard files of a tiny MNIST-format dataset; returns the raw arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    train, train_y = make_split(rng, n_train)
    test, test_y = make_split(rng, n_test)
    blobs = {
        "train_images": idx_images(train),
        "train_labels": idx_labels(train_y),
        "test_images": idx_images(test),
        "test_labels": idx_labels(test_y),
    }
    for key, blob in blobs.items():
        if gz:
            (directory / f"{STEMS[key]}.gz").write_bytes(gzip.compress(blob))
        else:
            (directory / STEMS[key]).write_bytes(blob)
    return train, train_y, test, test_y


@pytest.mark.parametrize("kind", ["fashion-mnist", "mnist", "kmnist", "idx"])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_idx_directory(tmp_path, kind, gz):
    train, train_y, test, test_y = write_idx_dir(tmp_path / "d", gz=gz)
    ds = load_dataset(f"{kind}:{tmp_path / 'd'}")
    assert ds.name == f"{kind}:{tmp_path / 'd'}"
    assert ds.train.shape == (7, 1, 5, 4) and ds.test.shape == (3, 1, 5, 4)
    assert ds.train.dtype == np.float32 and ds.image_shape == (1, 5, 4)
    np.testing.assert_array_equal(ds.train[:, 0], train.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.test[:, 0], test.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.train_labels, train_y)
    np.testing.assert_array_equal(ds.test_labels, test_y)
    assert ds.train_labels.dtype == np.int64
    validate_images(ds.train, "bernoulli")


def test_read_idx_raw_and_gz_agree(tmp_path):
    images, _ = make_split(np.random.default_rng(1), 4)
    (tmp_path / "a").write_bytes(idx_images(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_images(images)))
    for name in ("a", "a.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, images)


def test_load_npz_keras_style(tmp_path):
    rng = np.random.default_rng(2)
    (x_train, y_train), (x_test, y_test) = make_split(rng, 6), make_split(rng, 2)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset(f"npz:{path}")
    assert ds.train.shape == (6, 1, 5, 4) and ds.test.shape == (2, 1, 5, 4)
    np.testing.assert_array_equal(ds.train[:, 0], x_train.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.test_labels, y_test)


def test_digits():
    ds = load_dataset("digits")
    assert ds.train.shape == (1500, 1, 8, 8) and ds.test.shape == (297, 1, 8, 8)
    assert ds.train_labels.shape == (1500,) and ds.test_labels.shape == (297,)
    assert ds.train.dtype == np.float32
    for split in (ds.train, ds.test):
        assert split.min() >= 0 and split.max() <= 1
    assert ds.train.max() == 1 and set(np.unique(ds.train_labels)) == set(range(10))
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.test, ds.test)


@pytest.mark.parametrize("spec", ["cifar10", "emnist:/tmp", "mnist:", "", "npz"])
def test_unknown_dataset(spec):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(spec)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"mnist:{tmp_path / 'nowhere'}")


def test_missing_file_is_named(tmp_path):
    write_idx_dir(tmp_path)
    (tmp_path / STEMS["test_labels"]).unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_wrong_magic(tmp_path):
    write_idx_dir(tmp_path)
    blob = bytearray((tmp_path / STEMS["train_images"]).read_bytes())
    blob[:4] = (2052).to_bytes(4, "big")
    (tmp_path / STEMS["train_images"]).write_bytes(bytes(blob))
    with pytest.raises(DataError, match="magic number 2052"):
        load_dataset(f"mnist:{tmp_path}")


def test_labels_where_images_belong(tmp_path):
    write_idx_dir(tmp_path)
    labels = (tmp_path / STEMS["train_labels"]).read_bytes()
    (tmp_path / STEMS["train_images"]).write_bytes(labels)
    with pytest.raises(DataError, match="3-D"):
        load_dataset(f"mnist:{tmp_path}")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated_file(tmp_path, gz):
    write_idx_dir(tmp_path, gz=gz)
    name = STEMS["train_images"] + (".gz" if gz else "")
    blob = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(blob[:-5])
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        load_dataset(f"mnist:{tmp_path}")


def test_too_short_file(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(tmp_path / "x")


def test_image_and_label_counts_must_match(tmp_path):
    write_idx_dir(tmp_path)
    (tmp_path / STEMS["train_labels"]).write_bytes(idx_labels(np.zeros(6)))
    with pytest.raises(DataError, match="7 train images but 6 train labels"):
        load_dataset(f"mnist:{tmp_path}")


def test_npz_errors(tmp_path):
    x, y = make_split(np.random.default_rng(3), 3)
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=x, y_train=y)
    with pytest.raises(DataError, match=r"lacks arrays \['x_test', 'y_test'\]"):
        load_dataset(f"npz:{path}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"definitely not a zip file")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(f"npz:{junk}")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=x, y_train=y[:2], x_test=x, y_test=y)
    with pytest.raises(DataError, match="x_train"):
        load_dataset(f"npz:{bad}")
    floats = tmp_path / "floats.npz"
    np.savez(floats, x_train=x.astype(np.float32), y_train=y, x_test=x, y_test=y)
    with pytest.raises(DataError, match=r"values in \[0, 1\]"):
        load_dataset(f"npz:{floats}")


def test_validate_images():
    good = np.random.default_rng(4).random((2, 1, 3, 3)).astype(np.float32)
    validate_images(good, "bernoulli")
    validate_images(good * 5 - 2, "gaussian")
    with pytest.raises(DataError, match=r"values in \[-1\.59.*needs values in \[0, 1\]"):
        validate_images(good * 5 - 2, "bernoulli")
    for bad_value in (np.nan, np.inf, -np.inf):
        x = good.copy()
        x[1, 0, 2, 1] = bad_value
        for likelihood in ("bernoulli", "gaussian"):
            with pytest.raises(DataError, match="1 NaN or Inf"):
                validate_images(x, likelihood)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        validate_images(good[0], "bernoulli")
    with pytest.raises(DataError, match="floating point"):
        validate_images((good > 0.5).astype(np.int64), "bernoulli")
    with pytest.raises(DataError, match="numpy array"):
        validate_images(good.tolist(), "bernoulli")
    with pytest.raises(DataError, match="images"):
        validate_images(good[0], name="images")


def test_batch_indices():
    a = batch_indices(103, 10, seed=1, epoch=0)
    assert a.shape == (10, 10) and a.dtype.kind == "i"
    assert len(np.unique(a)) == 100 and a.min() >= 0 and a.max() < 103
    np.testing.assert_array_equal(a, batch_indices(103, 10, seed=1, epoch=0))
    assert not np.array_equal(a, batch_indices(103, 10, seed=1, epoch=1))
    assert not np.array_equal(a, batch_indices(103, 10, seed=2, epoch=0))
    np.testing.assert_array_equal(
        batch_indices(7, 3, seed=0, epoch=5, shuffle=False), [[0, 1, 2], [3, 4, 5]]
    )
    assert batch_indices(5, 5, seed=0, epoch=0).shape == (1, 5)
    with pytest.raises(DataError, match="larger than the dataset"):
        batch_indices(5, 6, seed=0, epoch=0)
    with pytest.raises(DataError, match="positive"):
        batch_indices(5, 0, seed=0, epoch=0)


def test_binarize():
    rng = np.random.default_rng(5)
    x = np.full((100, 1, 20, 20), 0.3, np.float32)
    x[:, :, :10] = 0.0
    x[:, :, 10:12] = 1.0
    b = binarize(x, rng)
    assert b.dtype == np.float32 and b.shape == x.shape
    assert set(np.unique(b)) == {0.0, 1.0}
    assert np.all(b[:, :, :10] == 0) and np.all(b[:, :, 10:12] == 1)
    middle = b[:, :, 12:]
    # 32000 Bernoulli(0.3) draws: within 5 standard errors of 0.3.
    assert abs(middle.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / middle.size)
    np.testing.assert_array_equal(b, binarize(x, np.random.default_rng(5)))
    assert not np.array_equal(b, binarize(x, np.random.default_rng(6)))


def test_standard_normal_is_shared_noise():
    a = standard_normal(0, 3, (4, 5))
    assert a.shape == (4, 5) and a.dtype == np.float64
    np.testing.assert_array_equal(a, standard_normal(0, 3, (4, 5)))
    assert not np.array_equal(a, standard_normal(0, 4, (4, 5)))
    assert standard_normal(0, 3, (4, 5), "float32").dtype == np.float32
