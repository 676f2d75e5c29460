"""Contracts of the two file readers (``vae_common.idx``, ``vae_common.npz``) at their edges.

Each test pins an edge a full generic mutation run found unpinned: where an IDX header counts as
cut short and the byte count its message gives, that the size limit of one file (or one npz
entry) is inclusive, the byte count of a gzipped file that ends early, that every npz entry is
checked (its declared size, and that it is a .npy array), ``load_npz``'s defaults (seed 0, float
images), which check refuses a 1-D split beside its labels, and the image-size message. Tiny
files written into ``tmp_path``, numpy only, fast.
"""

from __future__ import annotations

import gzip
import re
import struct
import zipfile

import numpy as np
import pytest

from vae_common import npz
from vae_common.datasets import held_out
from vae_common.errors import DataError
from vae_common.idx import read_idx
from vae_common.npz import load_npz
from vae_common.sources import DEFAULT_TEST_FRACTION, DataSource


def idx_header(magic: int, *dims: int) -> bytes:
    return b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))


def exact(text: str) -> str:
    return f"^{re.escape(text)}$"


# -- IDX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("kept", [12, 14, 15])
def test_an_image_header_cut_short_is_too_short_naming_the_bytes_it_has(tmp_path, gz, kept):
    """An image file's header is 16 bytes (magic, N, rows, cols): one of 12 to 15 bytes is too
    short, and the message gives the header bytes found (the decompressed ones for gzip)."""
    blob = idx_header(2051, 2, 4, 4)[:kept]
    path = tmp_path / ("cut.gz" if gz else "cut")
    path.write_bytes(gzip.compress(blob) if gz else blob)
    with pytest.raises(
        DataError, match=exact(f"{path} is too short to be an IDX file ({kept} bytes)")
    ):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_a_complete_header_without_images_is_not_too_short(tmp_path, gz):
    """16 bytes declaring 0 images of 4x4 are a whole (empty) image file; 8 declaring 0 labels a
    whole label file."""
    for name, blob, shape in (
        ("images", idx_header(2051, 0, 4, 4), (0, 4, 4)),
        ("labels", idx_header(2049, 0), (0,)),
    ):
        path = tmp_path / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(blob) if gz else blob)
        assert read_idx(path).shape == shape


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_the_size_limit_admits_a_file_of_exactly_the_limit(tmp_path, gz):
    """``max_bytes`` is the most a file may declare: 2 images of 4x4 (32 bytes) load under a
    limit of 32 and are refused under 31, naming the limit."""
    pixels = np.arange(32, dtype=np.uint8)
    blob = idx_header(2051, 2, 4, 4) + pixels.tobytes()
    path = tmp_path / ("two.gz" if gz else "two")
    path.write_bytes(gzip.compress(blob) if gz else blob)
    np.testing.assert_array_equal(read_idx(path, max_bytes=32), pixels.reshape(2, 4, 4))
    with pytest.raises(DataError, match=r"\(48 bytes\), more than the 31-byte limit"):
        read_idx(path, max_bytes=31)


def test_a_gzipped_file_that_ends_early_names_the_bytes_it_has(tmp_path):
    """A complete gzip stream of a 16-byte header declaring 2 images of 4x4 (48 bytes in all)
    and 20 pixels holds 36 bytes: the message gives both counts."""
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(idx_header(2051, 2, 4, 4) + bytes(20)))
    with pytest.raises(
        DataError,
        match=exact(
            f"{path}: header says shape (2, 4, 4) (48 bytes), file has 36 bytes "
            "(truncated or corrupt)"
        ),
    ):
        read_idx(path)


# -- npz ----------------------------------------------------------------------------------------


def keras_arrays(rows: int = 5, cols: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (4, rows, cols), dtype=np.uint8),
        "y_train": np.arange(4),
        "x_test": rng.integers(0, 256, (2, rows, cols), dtype=np.uint8),
        "y_test": np.arange(2),
    }


def declare_size(path, member: str, size: int) -> None:
    """Rewrite the uncompressed size the zip's central directory gives ``member`` (the size
    zipfile's ``infolist`` reports); the entry's data is left as it is."""
    blob = bytearray(path.read_bytes())
    name = member.encode()
    start = 0
    while True:
        start = blob.index(b"PK\x01\x02", start)
        (name_len,) = struct.unpack_from("<H", blob, start + 28)
        if blob[start + 46 : start + 46 + name_len] == name:
            break
        start += 4
    struct.pack_into("<I", blob, start + 24, size)
    path.write_bytes(bytes(blob))


def test_an_npz_entry_declaring_more_than_the_limit_is_refused_naming_it(tmp_path):
    """Every entry of the zip directory is checked against MAX_DATA_BYTES before any is read: an
    entry declaring one byte more than the limit is refused by name and size."""
    path = tmp_path / "big.npz"
    np.savez(path, **keras_arrays())
    declare_size(path, "x_test.npy", npz.MAX_DATA_BYTES + 1)
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("x_test.npy").file_size == npz.MAX_DATA_BYTES + 1
    with pytest.raises(
        DataError,
        match=exact(
            f"{path}: entry x_test.npy declares {npz.MAX_DATA_BYTES + 1} bytes, more than the "
            f"{npz.MAX_DATA_BYTES}-byte limit (vae_common.data.MAX_DATA_BYTES)"
        ),
    ):
        load_npz(path)


def test_an_npz_entry_of_exactly_the_limit_is_read(tmp_path, monkeypatch):
    """The limit is inclusive: with MAX_DATA_BYTES set to the largest entry's size the file
    loads, one byte less refuses that entry."""
    path = tmp_path / "edge.npz"
    arrays = keras_arrays(rows=9, cols=8)  # x_train, 4 x 9 x 8 bytes, is the largest entry
    np.savez(path, **arrays)
    with zipfile.ZipFile(path) as z:
        sizes = {info.filename: info.file_size for info in z.infolist()}
    largest = max(sizes.values())
    assert [k for k, v in sizes.items() if v == largest] == ["x_train.npy"]
    monkeypatch.setattr(npz, "MAX_DATA_BYTES", largest)
    ds = load_npz(path)
    np.testing.assert_array_equal(ds.train[:, 0], arrays["x_train"] / np.float32(255))
    monkeypatch.setattr(npz, "MAX_DATA_BYTES", largest - 1)
    with pytest.raises(
        DataError,
        match=rf"entry x_train\.npy declares {largest} bytes, more than the {largest - 1}-",
    ):
        load_npz(path)


def test_an_npz_entry_that_is_not_a_npy_array_is_refused_naming_it(tmp_path):
    """A zip member named like an array but not in .npy format (numpy hands back its raw bytes)
    is a DataError naming the entry, not an AttributeError further on."""
    path = tmp_path / "raw.npz"
    arrays = keras_arrays()
    with zipfile.ZipFile(path, "w") as z:
        for key in ("x_train", "y_train", "y_test"):
            with z.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, arrays[key])
        z.writestr("x_test.npy", b"not an array at all")
    with pytest.raises(DataError, match=exact(f"{path}: entry x_test is not a .npy array")):
        load_npz(path)


def test_load_npz_splits_a_single_array_by_seed_0_into_float_images(tmp_path):
    """Called with the path alone, ``load_npz`` holds out DEFAULT_TEST_FRACTION of ``x`` by the
    seed-0 permutation (``held_out(n, fraction, 0)``) and makes float32 images k / 255; with
    ``keep_uint8`` the stored uint8 pixels stay."""
    x = np.random.default_rng(4).integers(0, 256, (20, 3, 2), dtype=np.uint8)
    path = tmp_path / "x.npz"
    np.savez(path, x=x, y=np.arange(20))
    ds = load_npz(path)
    train_idx, test_idx = held_out(20, DEFAULT_TEST_FRACTION, 0)
    np.testing.assert_array_equal(ds.train_labels, train_idx)
    np.testing.assert_array_equal(ds.test_labels, test_idx)
    assert ds.train.dtype == ds.test.dtype == np.float32
    np.testing.assert_array_equal(ds.test[:, 0], x[test_idx] / np.float32(255))
    assert ds.source == DataSource(
        f"npz:{path}", "nhw", test_fraction=DEFAULT_TEST_FRACTION, split_seed=0
    )
    kept = load_npz(path, keep_uint8=True)
    assert kept.train.dtype == np.uint8
    np.testing.assert_array_equal(kept.train[:, 0], x[train_idx])


def test_a_1d_npz_split_beside_its_labels_is_refused_by_the_layout_check(tmp_path):
    """The labels check refuses only a split without an N axis (0-d); a 1-D split has one, so it
    is refused by the image layout, which names the array and its shape."""
    path = tmp_path / "flat.npz"
    x = np.zeros((3, 2, 2), np.uint8)
    np.savez(
        path, x_train=x, y_train=np.arange(3), x_test=np.zeros(2, np.uint8), y_test=np.arange(2)
    )
    with pytest.raises(
        DataError,
        match=exact(
            f"{path}:x_test have shape (2,): images must be (N, H, W), (N, H, W, C) or (N, C, H, W)"
        ),
    ):
        load_npz(path)


def test_npz_splits_of_two_image_sizes_are_refused_naming_each_size(tmp_path):
    """The message gives each split's (C, H, W), the train split's first."""
    path = tmp_path / "sizes.npz"
    np.savez(path, **{**keras_arrays(), "x_test": np.zeros((2, 6, 4), np.uint8)})
    with pytest.raises(
        DataError,
        match=exact(
            f"{path}: x_train images are (1, 5, 4) (C, H, W) but x_test images are (1, 6, 4); "
            "both splits must have one image size"
        ),
    ):
        load_npz(path)
