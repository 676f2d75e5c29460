"""Contracts of the shared data code (``vae_common.batches``, ``sources``, ``layout``,
``datasets``, ``idx``, ``npz``, ``data``) at their edges, each against a value computed here.

Each test pins an edge a generic mutation run found unpinned: a comparison's boundary, a limit,
a default. Numpy only, fast.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from idx_files import write_idx_dir

from vae_common.batches import binarize, last_batch_indices
from vae_common.data import load_dataset
from vae_common.datasets import Dataset
from vae_common.errors import DataError
from vae_common.idx import load_idx_dir
from vae_common.layout import resolve_layout
from vae_common.npz import load_npz
from vae_common.sources import DataSource


def test_binarization_is_one_exactly_when_the_draw_is_below_the_intensity():
    """A pixel is 1 iff its uniform draw u (``rng.random(shape, float32)``, in [0, 1)) is
    strictly below its intensity p, so P(1) = P(u < p) = p: a pixel whose intensity equals its
    draw is 0, one a float32 ulp above it is 1 (``u <= p`` would make P(1) = p + 2**-24 on the
    float32 grid, and intensity 0 sometimes 1)."""
    draws = np.random.default_rng(3).random((4, 1, 5, 5), dtype=np.float32)
    assert not np.any(binarize(draws.copy(), np.random.default_rng(3)))
    above = np.nextafter(draws, np.float32(2))
    assert np.all(binarize(above, np.random.default_rng(3)) == 1)


def test_batches_of_one_leave_no_last_batch():
    """Batch size 1 is a valid size: every example is a full batch, none is left over."""
    assert last_batch_indices(5, 1, seed=0, epoch=1).shape == (0,)
    assert last_batch_indices(5, 1, seed=0, epoch=1, shuffle=False).tolist() == []


# -- DataSource's checks at their edges ------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("test_fraction", 0, r"test_fraction must be a number in \(0, 1\)"),
        ("test_fraction", 0.0, r"test_fraction must be a number in \(0, 1\)"),
        ("test_fraction", "0.5", r"test_fraction must be a number in \(0, 1\)"),
        ("test_fraction", True, r"test_fraction must be a number in \(0, 1\)"),
        ("split_seed", 2**63, r"split_seed must be an integer in \[0, 2\*\*63\)"),
        ("split_seed", -1, r"split_seed must be an integer in \[0, 2\*\*63\)"),
        ("split_seed", 1.5, r"split_seed must be an integer"),
        ("split_seed", "3", r"split_seed must be an integer"),
        ("split_seed", True, r"split_seed must be an integer"),
        ("resize", (True, 4), r"resize must be \(H, W\), two positive integers"),
        ("resize", (2.5, 4), r"resize must be \(H, W\), two positive integers"),
        ("resize", (0, 4), r"resize must be \(H, W\), two positive integers"),
    ],
)
def test_data_source_refuses_each_value_just_outside_its_range(field, value, match):
    """A record read back from JSON can hold any of these; each is a DataError naming the field
    (not a TypeError from a comparison, not a value let through)."""
    with pytest.raises(DataError, match=match):
        DataSource("npz:d.npz", **{field: value})


@pytest.mark.parametrize("spec", [5, "", None, b"digits"])
def test_data_source_refuses_a_spec_that_is_not_a_non_empty_string(spec):
    """Neither a number nor bytes nor an empty string is a spec (each alone fails one half of
    the check)."""
    with pytest.raises(DataError) as info:
        DataSource(spec)
    assert str(info.value) == f"DataSource.spec must be a non-empty string, got {spec!r}"


def test_data_source_is_frozen():
    """A recorded source cannot be changed after its checks ran."""
    source = DataSource("digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        source.split_seed = -1  # type: ignore[misc]
    assert source.split_seed == 0


def test_data_source_accepts_the_values_at_the_edges_of_its_ranges():
    """Images one pixel high or wide, the largest 63-bit seed, a fraction just inside (0, 1)."""
    edge = DataSource("images:d", resize=(1, 1), split_seed=2**63 - 1, test_fraction=1e-9)
    assert (edge.resize, edge.split_seed, edge.test_fraction) == ((1, 1), 2**63 - 1, 1e-9)
    assert DataSource("npz:d.npz", split_seed=np.int64(5)).split_seed == 5


@pytest.mark.parametrize(
    "spec, kind", [("npz:/d/x.npz", "npz"), ("digits", "digits"), ("images:a:b", "images")]
)
def test_data_source_kind_is_the_part_before_the_first_colon(spec, kind):
    assert DataSource(spec).kind == kind


@pytest.mark.parametrize(
    "shape, why",
    [
        ((2, 3, 7, 4), "both axis 1 (3) and axis 3 (4) could hold the channels"),
        ((2, 5, 6, 7), "neither axis 1 (5) nor axis 3 (7) holds 1, 3 or 4 channels"),
    ],
)
def test_an_ambiguous_layout_is_refused_naming_both_axes_sizes(shape, why):
    with pytest.raises(DataError, match=re.escape(why)):
        resolve_layout(shape)


@pytest.mark.parametrize(
    "given, said",
    [
        ({"labels": np.arange(4)}, "labels given, test_labels None"),
        ({"test_labels": np.arange(2)}, "labels None, test_labels given"),
    ],
)
def test_labels_for_one_split_only_are_refused_saying_which(given, said):
    x = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(DataError, match=f"for both splits or for neither \\({said}\\)"):
        Dataset.from_arrays(x, x[:2], **given)


def test_an_idx_directory_records_the_spec_it_was_loaded_by(tmp_path):
    """The source names the spec given (``fashion-mnist:DIR`` stays that, so the record reloads
    the same kind), and ``idx:DIR`` when the directory is loaded without a name."""
    directory = write_idx_dir(tmp_path / "d", n_train=3, n_test=2, size=2)
    named = load_idx_dir(directory, name=f"fashion-mnist:{directory}")
    assert named.name == named.source.spec == f"fashion-mnist:{directory}"
    plain = load_idx_dir(directory)
    assert plain.name == plain.source.spec == f"idx:{directory}"
    # Float32 k / 255 unless keep_uint8 is asked for.
    assert plain.train.dtype == plain.test.dtype == np.float32
    assert load_idx_dir(directory, keep_uint8=True).train.dtype == np.uint8
    assert load_dataset(named.source).source == named.source


@pytest.mark.parametrize("uint8_split", ["train", "test"])
def test_as_float_converts_a_uint8_split_whichever_it_is(uint8_split):
    """Each uint8 split becomes float32 k / 255, also when the other split is float already;
    a dataset of float splits is returned as it is."""
    pixels = np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2) * 30
    floats = np.full((3, 1, 2, 2), 0.25, np.float32)
    splits = {"train": floats, "test": floats, uint8_split: pixels}
    got = Dataset("d", splits["train"], splits["test"]).as_float()
    converted = getattr(got, uint8_split)
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, pixels.astype(np.float32) / np.float32(255))
    plain = Dataset("d", floats, floats)
    assert plain.as_float() is plain


def test_an_npz_split_that_is_a_scalar_is_refused_beside_its_labels(tmp_path):
    """A 0-d image array (no N axis) next to its labels is a DataError naming both shapes."""
    path = tmp_path / "bad.npz"
    x = np.zeros((3, 2, 2), np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(3), x_test=np.uint8(7), y_test=np.arange(1))
    with pytest.raises(DataError, match=r"x_test must be \(N, H, W\).* got \(\) and \(1,\)"):
        load_npz(path)


# -- load_dataset's spec and the bundled digits ------------------------------------------------


def test_the_digits_split_is_the_documented_seed_0_permutation():
    """``digits`` (a record carries no seed for it) is scikit-learn's 1797 images / 16, permuted
    by ``default_rng(0)``, the last 297 held out: every run and every reload sees that split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    order = np.random.default_rng(0).permutation(1797)
    x = bunch.data.astype(np.float32).reshape(1797, 1, 8, 8)[order] / np.float32(16)
    ds = load_dataset("digits")
    np.testing.assert_array_equal(ds.test, x[1500:])
    np.testing.assert_array_equal(ds.test_labels, bunch.target[order][1500:])
    np.testing.assert_array_equal(ds.train_labels, bunch.target[order][:1500])


def test_load_dataset_takes_its_options_by_keyword_only():
    """``load_dataset("npz:f", "nhwc")`` is a TypeError: an option is never taken by position."""
    with pytest.raises(TypeError, match="positional"):
        load_dataset("digits", "auto")


@pytest.mark.parametrize("spec", ["mnist:", "npz:", "images:"])
def test_a_spec_without_its_argument_is_an_unknown_dataset(spec):
    """A kind with nothing after the colon is refused as an unknown dataset naming the spec:
    given as a string (before its options are looked at, even a bad one) and as a recorded
    DataSource (not read as the current directory or an empty file name)."""
    unknown = re.escape(f"unknown dataset {spec!r}; use digits")
    with pytest.raises(DataError, match=unknown):
        load_dataset(spec, layout="bad")
    with pytest.raises(DataError, match=unknown):
        load_dataset(DataSource(spec))


# -- Dataset and held_out at their edges -----------------------------------------------------------


def test_a_dataset_is_frozen():
    """A Dataset's arrays cannot be swapped under the source that records how they were loaded."""
    import dataclasses

    x = np.zeros((3, 1, 2, 2), np.float32)
    ds = Dataset.from_arrays(x, x)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.train = x[:1]


def test_from_arrays_takes_its_options_by_keyword_only():
    x = np.zeros((3, 1, 2, 2), np.float32)
    with pytest.raises(TypeError, match="positional"):
        Dataset.from_arrays(x, x, "nchw")


def test_splits_of_two_image_sizes_are_refused_naming_both_sizes():
    with pytest.raises(
        DataError, match=re.escape("are (1, 2, 2) (C, H, W) but d test images are (1, 3, 3);")
    ):
        Dataset.from_arrays(np.zeros((4, 1, 2, 2)), np.zeros((2, 1, 3, 3)), name="d")


@pytest.mark.parametrize(
    "n, fraction, n_test",
    [(2, 0.9, 1), (3, 0.9, 2), (3, 0.01, 1), (10, 0.25, 2), (10, 0.35, 4), (10, 0.95, 9)],
)
def test_held_out_keeps_at_least_one_example_on_each_side(n, fraction, n_test):
    """round(n * fraction) examples are held out (Python's rounding: 2.5 -> 2), but at least one
    and at most n - 1; the two parts split range(n)."""
    from vae_common.datasets import held_out

    train, test = held_out(n, fraction, seed=0)
    assert (len(train), len(test)) == (n - n_test, n_test)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))


def test_held_out_draw_golden_values():
    """The held-out split of a source without a test split of its own, as literal indices: a
    change of its stream (``SPLIT_STREAM``) or of the seed's use moves every recorded run's test
    set, so it must show up here as a deliberate change (the other tests derive the stream from
    the same constant)."""
    from vae_common.datasets import held_out

    got = [[a.tolist() for a in held_out(10, 0.2, seed=s)] for s in (0, 7)]
    assert got == [
        [[4, 6, 5, 3, 2, 8, 9, 1], [7, 0]],
        [[5, 2, 7, 4, 0, 1, 8, 9], [6, 3]],
    ]


def test_data_source_json_is_canonical():
    """The record is written with its keys sorted (one text for one source, whatever the field
    order), and reads back to the same source."""
    source = DataSource("npz:d.npz", "nhwc", (3, 4), "gray", 0.25, 7, "static")
    text = source.to_json()
    assert text == (
        '{"binarize": "static", "color": "gray", "layout": "nhwc", "resize": [3, 4], '
        '"spec": "npz:d.npz", "split_seed": 7, "test_fraction": 0.25}'
    )
    assert DataSource.from_json(text) == source
