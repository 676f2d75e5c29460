"""Datasets, validation, binarization and batching; IDX files are written here, never downloaded."""

from __future__ import annotations

import gzip
import re
import warnings

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


def test_npz_values_are_checked_against_the_likelihood_not_at_load(tmp_path):
    # Float images keep their values; whether they suit the likelihood is decided by the run
    # (validate_images with the model's likelihood), so a Gaussian run accepts any finite value
    # and is never told what the Bernoulli likelihood needs.
    x, y = make_split(np.random.default_rng(3), 3)
    floats = tmp_path / "floats.npz"
    wide = x.astype(np.float32) / 100
    wide[0, 0, :2] = -2, 3.1  # values in [-2, 3.1]
    np.savez(floats, x_train=wide, y_train=y, x_test=wide, y_test=y)
    ds = load_dataset(f"npz:{floats}")
    np.testing.assert_array_equal(ds.train[:, 0], wide)
    validate_images(ds.train, "gaussian", name="train")
    with pytest.raises(DataError, match=r"^train has values in \[-2, 3\.1\]; the Bernoulli"):
        validate_images(ds.train, "bernoulli", name="train")
    nan = wide.copy()
    nan[0, 0, 0] = np.nan
    np.savez(floats, x_train=nan, y_train=y, x_test=wide, y_test=y)
    with pytest.raises(DataError, match=r"floats\.npz:x_train contains 1 NaN or Inf values"):
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


# Damaged, hostile or inconsistent files: each a DataError naming the file.


def npz_arrays(seed=0, rows=5, cols=4, **changes):
    rng = np.random.default_rng(seed)
    (x_train, y_train), (x_test, y_test) = make_split(rng, 4, rows, cols), make_split(rng, 2)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(changes)
    return arrays


def test_npz_that_is_a_bad_zip(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, **npz_arrays())
    blob = good.read_bytes()
    for name, damaged in (
        ("header-only.npz", blob[:30]),  # a zip local header, then nothing
        ("cut.npz", blob[: len(blob) // 2]),  # the central directory is gone
        ("pk.npz", b"PK\x03\x04" + bytes(200)),
    ):
        path = tmp_path / name
        path.write_bytes(damaged)
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))} is not a readable \.npz"):
            load_dataset(f"npz:{path}")


def test_npz_whose_member_is_damaged(tmp_path):
    path = tmp_path / "flipped.npz"
    np.savez(path, **npz_arrays())
    blob = bytearray(path.read_bytes())
    start = blob.index(b"x_train.npy") + len("x_train.npy") + 90  # inside the array's bytes
    blob[start : start + 8] = bytes(8) if any(blob[start : start + 8]) else b"\xff" * 8
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_dataset(f"npz:{path}")


def test_npz_that_is_really_an_npy(tmp_path):
    path = tmp_path / "mnist.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 5, 4), np.uint8))
    with pytest.raises(DataError, match=r"holds a single \.npy array of shape \(3, 5, 4\)"):
        load_dataset(f"npz:{path}")


def test_npz_with_string_labels(tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, **npz_arrays(y_train=np.array(["a", "b", "c", "d"])))
    with pytest.raises(
        DataError, match=r"labels\.npz: y_train must hold integer labels, got dtype <U1"
    ):
        load_dataset(f"npz:{path}")
    np.savez(path, **npz_arrays(y_test=np.array([0.0, 1.0])))
    with pytest.raises(DataError, match="y_test must hold integer labels, got dtype float64"):
        load_dataset(f"npz:{path}")


@pytest.mark.parametrize("dtype", ["complex64", "complex128", "<U3"])
def test_npz_with_images_that_are_not_real_numbers(tmp_path, dtype):
    x = npz_arrays()["x_train"]
    path = tmp_path / "images.npz"
    np.savez(path, **npz_arrays(x_train=(x / 255 + 1j * x).astype(dtype)))
    # Refused before any cast: a cast would drop the imaginary part with only a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            DataError, match=rf"x_train must hold real numbers .* got dtype {dtype}"
        ):
            load_dataset(f"npz:{path}")


def idx_header(magic, *dims):
    return b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))


def test_gzip_idx_that_expands_past_its_header_is_refused_after_a_bounded_read(
    tmp_path, monkeypatch
):
    # 16 bytes of header declaring 2 images of 4x4, then 64 MiB of zeros: ~64 KiB gzipped.
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_header(2051, 2, 4, 4))
        chunk = bytes(1 << 20)
        for _ in range(64):
            f.write(chunk)
    assert path.stat().st_size < 1 << 18
    sizes = []
    real_read = gzip.GzipFile.read

    def recording_read(self, size=-1):
        sizes.append(size)
        return real_read(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", recording_read)
    with pytest.raises(DataError, match=r"bomb\.gz: header says shape \(2, 4, 4\) .*file has more"):
        read_idx(path)
    assert sizes and all(0 <= s <= 2 * 4 * 4 + 1 for s in sizes), sizes


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_header_declaring_more_than_the_limit_is_refused_before_reading(tmp_path, gz):
    # 60000 images of 30000 x 30000 pixels (54 TB): refused from the header alone.
    blob = idx_header(2051, 60000, 30000, 30000) + bytes(64)
    path = tmp_path / ("huge.gz" if gz else "huge")
    path.write_bytes(gzip.compress(blob) if gz else blob)
    with pytest.raises(DataError, match=r"\(60000, 30000, 30000\) .*more than the 2147483648-byte"):
        read_idx(path)
    # The limit is a parameter (MAX_DATA_BYTES by default).
    small = tmp_path / "small"
    small.write_bytes(idx_header(2049, 10) + bytes(10))
    assert read_idx(small).shape == (10,)
    with pytest.raises(DataError, match="more than the 9-byte limit"):
        read_idx(small, max_bytes=9)


def test_idx_dimensions_whose_product_overflows_64_bits(tmp_path):
    # 2**31 * 2**31 * 4 = 2**64: an int64 product wraps around to 0, which a header-only file
    # would match. Exact integers here: the declared size is refused against the limit.
    path = tmp_path / "overflow"
    path.write_bytes(idx_header(2051, 2**31, 2**31, 4))
    with pytest.raises(DataError, match=r"\(2147483648, 2147483648, 4\) \(18446744073709551632 "):
        read_idx(path)


def test_raw_idx_longer_than_its_header(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_header(2049, 3) + bytes(5))
    with pytest.raises(
        DataError, match=r"long: header says shape \(3,\) \(11 bytes\), file has 13"
    ):
        read_idx(path)


def test_train_and_test_images_of_different_sizes_are_refused_at_load(tmp_path):
    write_idx_dir(tmp_path)
    test_images = tmp_path / STEMS["test_images"]
    rng = np.random.default_rng(9)
    test_images.write_bytes(idx_images(rng.integers(0, 256, (3, 6, 4))))
    with pytest.raises(DataError) as info:
        load_dataset(f"mnist:{tmp_path}")
    message = str(info.value)
    assert str(tmp_path / STEMS["train_images"]) in message and str(test_images) in message
    assert "are 5x4" in message and "are 6x4" in message
    path = tmp_path / "sizes.npz"
    np.savez(path, **npz_arrays(x_test=np.zeros((2, 6, 4), np.uint8)))
    with pytest.raises(DataError, match=r"sizes\.npz: x_train images are \(1, 5, 4\) .* x_test"):
        load_dataset(f"npz:{path}")


def test_a_split_without_images_is_refused(tmp_path):
    write_idx_dir(tmp_path, n_test=0)
    with pytest.raises(DataError, match=rf"{STEMS['test_images']} holds no images"):
        load_dataset(f"mnist:{tmp_path}")
    path = tmp_path / "empty.npz"
    np.savez(path, **npz_arrays(x_train=np.zeros((0, 5, 4), np.uint8), y_train=np.zeros(0, int)))
    with pytest.raises(DataError, match="x_train holds no images"):
        load_dataset(f"npz:{path}")
