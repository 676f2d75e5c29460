"""Bring your own data: layouts, npz files with or without labels, numpy arrays from Python,
folders of PNG/JPEG images, and the record of the data source. Every file is written here, tiny."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from vae_common.data import (
    DEFAULT_TEST_FRACTION,
    SPLIT_STREAM,
    DataError,
    Dataset,
    DataSource,
    held_out,
    load_dataset,
    resolve_layout,
    to_nchw,
)
from vae_common.images import load_image_dir

RNG = np.random.default_rng(0)


def pixels(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# Layouts.


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((5, 7, 6), "nhw"),
        ((5, 1, 7, 6), "nchw"),
        ((5, 3, 7, 6), "nchw"),
        ((5, 4, 7, 6), "nchw"),
        ((5, 7, 6, 1), "nhwc"),
        ((5, 32, 32, 3), "nhwc"),
        ((5, 7, 6, 4), "nhwc"),
        # The smallest axis is never the rule: axis 2 (2) is smaller than axis 1 (3).
        ((5, 3, 2, 9), "nchw"),
        ((5, 9, 2, 3), "nhwc"),
    ],
)
def test_auto_layout(shape, layout):
    assert resolve_layout(shape) == layout


@pytest.mark.parametrize("shape", [(5, 3, 32, 3), (5, 4, 4, 4), (5, 1, 8, 1), (5, 5, 6, 7)])
def test_ambiguous_layouts_are_refused_naming_the_shape_and_the_option(shape):
    with pytest.raises(DataError) as info:
        resolve_layout(shape, what="x")
    message = str(info.value)
    assert f"x have shape {shape}, an ambiguous layout" in message
    assert "--layout nchw|nhwc" in message and "layout='nhwc'" in message


def test_forced_layouts():
    assert resolve_layout((5, 3, 32, 3), "nchw") == "nchw"
    assert resolve_layout((5, 3, 32, 3), "nhwc") == "nhwc"
    with pytest.raises(DataError, match=r"layout 'nchw' puts 32 channels on axis 1"):
        resolve_layout((5, 32, 32, 3), "nchw")
    with pytest.raises(DataError, match="layout 'nhw' needs 3-D"):
        resolve_layout((5, 1, 4, 4), "nhw")
    with pytest.raises(DataError, match="layout 'nhwc' needs 4-D"):
        resolve_layout((5, 4, 4), "nhwc")
    with pytest.raises(DataError, match=r"\(5, 4\): images must be"):
        resolve_layout((5, 4))
    with pytest.raises(DataError, match="layout must be one of"):
        resolve_layout((5, 4, 4), "hwc")


def test_to_nchw_converts_each_layout_to_the_same_images():
    nchw = pixels(4, 3, 5, 6)
    want = nchw.astype(np.float32) / 255
    np.testing.assert_array_equal(to_nchw(nchw, "nchw"), want)
    np.testing.assert_array_equal(to_nchw(nchw.transpose(0, 2, 3, 1), "nhwc"), want)
    np.testing.assert_array_equal(to_nchw(nchw[:, 0], "nhw"), want[:, :1])
    out = to_nchw(nchw.transpose(0, 2, 3, 1), "nhwc")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    floats = want * 3 - 1  # float values are kept as they are
    assert to_nchw(floats, "nchw") is floats  # float32 (N, C, H, W): not copied
    with pytest.raises(DataError, match="1 NaN or Inf"):
        floats[0, 0, 0, 0] = np.nan
        to_nchw(floats, "nchw")


# npz files.


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_channels_last_is_read_as_nchw(tmp_path):
    x, t = pixels(6, 8, 8, 3), pixels(2, 8, 8, 3, seed=1)
    path = save_npz(tmp_path / "c.npz", x_train=x, y_train=np.arange(6), x_test=t, y_test=[0, 1])
    ds = load_dataset(f"npz:{path}")
    assert ds.image_shape == (3, 8, 8) and ds.test.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(ds.train, x.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert ds.source == DataSource(f"npz:{path}", "nhwc")


@pytest.mark.parametrize("shape", [(4, 3, 32, 3), (4, 4, 4, 4)])
def test_npz_with_an_ambiguous_layout(tmp_path, shape):
    path = save_npz(tmp_path / "a.npz", x_train=pixels(*shape), x_test=pixels(*shape))
    with pytest.raises(DataError, match=re.escape(f"a.npz:x_train have shape {shape}")):
        load_dataset(f"npz:{path}")
    forced = load_dataset(f"npz:{path}", layout="nhwc")
    assert forced.image_shape == (shape[3], shape[1], shape[2])
    assert forced.source is not None and forced.source.layout == "nhwc"


def test_npz_splits_must_share_the_layout(tmp_path):
    path = save_npz(tmp_path / "m.npz", x_train=pixels(4, 8, 8, 3), x_test=pixels(2, 3, 8, 8))
    with pytest.raises(DataError, match=r"m\.npz:x_test have shape \(2, 3, 8, 8\): layout 'nhwc'"):
        load_dataset(f"npz:{path}")


@pytest.mark.parametrize("keys", [("x_train", "x_test"), ("train", "test")], ids=["keras", "plain"])
def test_npz_without_labels(tmp_path, keys):
    x, t = pixels(5, 6, 4), pixels(3, 6, 4, seed=1)
    path = save_npz(tmp_path / "n.npz", **{keys[0]: x, keys[1]: t})
    ds = load_dataset(f"npz:{path}")
    assert ds.train_labels is None and ds.test_labels is None
    np.testing.assert_array_equal(ds.test[:, 0], t.astype(np.float32) / 255)


def test_npz_with_plain_keys_and_labels(tmp_path):
    x, t = pixels(5, 6, 4), pixels(3, 6, 4, seed=1)
    path = save_npz(tmp_path / "p.npz", train=x, test=t, train_labels=np.arange(5),
                    test_labels=np.arange(3))  # fmt: skip
    ds = load_dataset(f"npz:{path}")
    np.testing.assert_array_equal(ds.test_labels, [0, 1, 2])


def test_npz_single_x_is_split_by_a_seeded_fraction(tmp_path):
    x, y = pixels(20, 6, 4), np.arange(20)
    path = save_npz(tmp_path / "x.npz", x=x, y=y)
    ds = load_dataset(f"npz:{path}")
    order = np.random.default_rng([0, SPLIT_STREAM]).permutation(20)
    assert round(20 * DEFAULT_TEST_FRACTION) == 2
    np.testing.assert_array_equal(ds.test_labels, order[:2])
    np.testing.assert_array_equal(ds.train_labels, order[2:])
    np.testing.assert_array_equal(ds.test[:, 0], x[order[:2]].astype(np.float32) / 255)
    assert ds.source == DataSource(f"npz:{path}", "nhw", test_fraction=0.1, split_seed=0)
    other = load_dataset(f"npz:{path}", test_fraction=0.25, split_seed=3)
    assert len(other.test) == 5 and not np.array_equal(other.test_labels[:2], order[:2])
    unlabelled = load_dataset(f"npz:{save_npz(tmp_path / 'u.npz', x=x)}")
    assert unlabelled.train_labels is None and len(unlabelled.train) == 18


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": 1, "x_test": 1, "y_train": 1}, r"lacks arrays \['y_test'\]"),
        ({"x_train": 1, "x_test": 1, "y_tran": 1}, r"arrays \['y_tran'\] that are not read"),
        ({"x_train": 1, "train": 1}, "more than one of the recognised sets"),
        ({"images": 1}, r"none of the recognised sets .* it has \['images'\]"),
        ({"test": 1}, r"lacks arrays \['train'\]"),
    ],
)
def test_npz_keys(tmp_path, arrays, message):
    values = {k: pixels(3, 4, 4) if not k.startswith("y") else np.arange(3) for k in arrays}
    path = save_npz(tmp_path / "k.npz", **values)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{path}")


# Arrays from Python.


def test_from_arrays():
    x, t = pixels(10, 5, 6, 3), pixels(4, 5, 6, 3, seed=1)
    ds = Dataset.from_arrays(x, t, labels=np.arange(10), test_labels=np.arange(4), name="mine")
    assert ds.name == "mine" and ds.image_shape == (3, 5, 6)
    np.testing.assert_array_equal(ds.test, t.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert ds.source == DataSource("arrays", "nhwc")
    split = Dataset.from_arrays(x, labels=np.arange(10), test_fraction=0.3, seed=2)
    train_idx, test_idx = held_out(10, 0.3, 2)
    np.testing.assert_array_equal(split.test_labels, test_idx)
    np.testing.assert_array_equal(split.train[:, 0], x[train_idx, :, :, 0] / np.float32(255))
    assert split.source == DataSource("arrays", "nhwc", test_fraction=0.3, split_seed=2)
    floats = Dataset.from_arrays(np.full((4, 1, 2, 2), -3.5), layout="nchw")
    assert floats.train.dtype == np.float32 and floats.train.min() == -3.5  # Gaussian data
    assert floats.train_labels is None


@pytest.mark.parametrize(
    "train, kwargs, message",
    [
        (np.zeros((4, 3, 3), complex), {}, "must hold real numbers .* complex128"),
        (np.array([["a"] * 3] * 3 * 4).reshape(4, 3, 3), {}, "real numbers .* <U1"),
        (np.empty((4, 3, 3), object), {}, "real numbers .* object"),
        (np.zeros((4, 3, 3)), {"labels": [0.5] * 4}, "integer labels, got dtype float64"),
        (np.zeros((4, 3, 3)), {"labels": [0, 1]}, "4 train images but 2 labels"),
        (np.full((4, 3, 3), np.inf), {}, "train images contains 27 NaN or Inf"),
        (np.zeros((4, 3, 32, 3)), {}, r"\(4, 3, 32, 3\), an ambiguous layout"),
        (np.zeros((1, 3, 3)), {}, "1 image.* cannot be split"),
        (np.zeros((4, 3, 3)), {"test_fraction": 1.0}, r"test_fraction must be a number in \(0, 1"),
    ],
)
def test_from_arrays_refuses(train, kwargs, message):
    with pytest.raises(DataError, match=message):
        Dataset.from_arrays(train, **kwargs)


def test_from_arrays_labels_for_both_splits_or_neither():
    x = np.zeros((4, 3, 3))
    with pytest.raises(DataError, match="labels for both splits or for neither"):
        Dataset.from_arrays(x, x, labels=[0, 1, 2, 3])
    with pytest.raises(DataError, match=r"train images are \(1, 3, 3\) .* test images are"):
        Dataset.from_arrays(x, np.zeros((4, 3, 4)))


# Image folders.


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def test_class_folders(tmp_path):
    root = tmp_path / "shapes"
    grey = {}
    for c, name in enumerate(["b", "a"]):  # labels follow the sorted names: a = 0, b = 1
        for i in range(5):
            grey[(name, i)] = pixels(6, 4, seed=10 * c + i)
            write_png(root / name / f"{i}.png", grey[(name, i)])
    (root / "a" / "notes.txt").write_text("ignored")
    ds = load_dataset(f"images:{root}", test_fraction=0.2)
    assert ds.classes == ("a", "b") and ds.image_shape == (1, 6, 4)
    assert len(ds.train) == 8 and len(ds.test) == 2
    files = [(name, i) for name in ("a", "b") for i in range(5)]  # sorted paths
    order = np.random.default_rng([0, SPLIT_STREAM]).permutation(10)
    for split, idx in ((ds.test, order[:2]), (ds.train, order[2:])):
        want = np.stack([grey[files[k]] for k in idx])[:, None] / np.float32(255)
        np.testing.assert_array_equal(split, want)
    np.testing.assert_array_equal(ds.test_labels, [files[k][0] == "b" for k in order[:2]])
    assert ds.source == DataSource(f"images:{root}", test_fraction=0.2)


def test_flat_folder_with_train_and_test_splits_and_rgb(tmp_path):
    root = tmp_path / "rgb"
    train = [pixels(5, 7, 3, seed=i) for i in range(3)]
    test = [pixels(5, 7, 3, seed=9)]
    for i, a in enumerate(train):
        write_png(root / "train" / f"{i}.png", a)
    (root / "test").mkdir()
    Image.fromarray(test[0]).save(root / "test" / "t.jpg", quality=100)
    ds = load_image_dir(root)
    assert ds.train_labels is None and ds.classes is None and ds.image_shape == (3, 5, 7)
    np.testing.assert_array_equal(ds.train, np.stack(train).transpose(0, 3, 1, 2) / np.float32(255))
    decoded = np.asarray(Image.open(root / "test" / "t.jpg"))  # JPEG is lossy: as Pillow reads it
    np.testing.assert_array_equal(ds.test[0], decoded.transpose(2, 0, 1) / np.float32(255))
    assert ds.source == DataSource(f"images:{root}")


def test_mixed_sizes_are_refused_and_resize_works(tmp_path):
    root = tmp_path / "sizes"
    write_png(root / "a.png", pixels(6, 4))
    write_png(root / "b.png", pixels(9, 8, seed=1))
    with pytest.raises(DataError) as info:
        load_dataset(f"images:{root}")
    message = str(info.value)
    assert f"{root / 'a.png'} is 6x4" in message and f"{root / 'b.png'} is 9x8" in message
    assert "--resize H,W" in message
    ds = load_dataset(f"images:{root}", resize=(3, 2))
    assert ds.image_shape == (1, 3, 2) and len(ds.train) + len(ds.test) == 2
    want = np.asarray(Image.fromarray(pixels(9, 8, seed=1)).resize((2, 3), Image.BILINEAR))
    images = {float(x.sum()): x for x in (*ds.train, *ds.test)}
    got = min(images.items(), key=lambda kv: abs(kv[0] - want.sum() / 255))[1]
    np.testing.assert_array_equal(got[0], want / np.float32(255))
    assert ds.source is not None and ds.source.resize == (3, 2)


def test_grey_and_colour_mixed(tmp_path):
    root = tmp_path / "mixed"
    write_png(root / "g.png", pixels(4, 4))
    write_png(root / "c.png", pixels(4, 4, 3, seed=1))
    with pytest.raises(DataError, match=r"mixes grey and colour .*g\.png is L, .*c\.png is RGB"):
        load_dataset(f"images:{root}")
    assert load_dataset(f"images:{root}", color="rgb").image_shape == (3, 4, 4)
    gray = load_dataset(f"images:{root}", color="gray")
    assert gray.image_shape == (1, 4, 4)
    both = np.concatenate([gray.train, gray.test])
    want = np.asarray(Image.fromarray(pixels(4, 4, 3, seed=1)).convert("L")) / np.float32(255)
    assert any(np.array_equal(x[0], want) for x in both)


def test_corrupt_and_foreign_files_are_named(tmp_path):
    root = tmp_path / "bad"
    write_png(root / "good.png", pixels(16, 16))
    blob = write_png(root / "broken.png", pixels(16, 16, seed=1)).read_bytes()
    (root / "broken.png").write_bytes(blob[: len(blob) // 2])  # the pixel data cut off
    with pytest.raises(DataError, match=re.escape(f"cannot decode image {root / 'broken.png'}")):
        load_dataset(f"images:{root}")
    (root / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=re.escape(f"cannot read image {root / 'broken.png'}")):
        load_dataset(f"images:{root}")
    Image.fromarray(pixels(4, 4)).save(root / "broken.png", format="GIF")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(f"images:{root}")
    (root / "broken.png").unlink()
    write_png(root / "deep.png", np.zeros((4, 4), np.uint16) + 300)
    with pytest.raises(DataError, match=r"deep\.png has mode I;16"):
        load_dataset(f"images:{root}")


def test_folder_forms_that_are_refused(tmp_path):
    root = tmp_path / "forms"
    write_png(root / "x.png", pixels(4, 4))
    write_png(root / "cls" / "y.png", pixels(4, 4))
    with pytest.raises(DataError, match="both image files .* and folders"):
        load_dataset(f"images:{root}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"images:{tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no PNG or JPEG images"):
        load_dataset(f"images:{tmp_path / 'empty'}")
    split = tmp_path / "split"
    write_png(split / "train" / "a" / "0.png", pixels(4, 4))
    with pytest.raises(DataError, match="has train/ but no test/"):
        load_dataset(f"images:{split}")
    write_png(split / "test" / "z" / "0.png", pixels(4, 4))
    with pytest.raises(DataError, match=r"classes \['z'\] that .*train does not have"):
        load_dataset(f"images:{split}")


def test_memory_is_bounded_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "big"
    for i in range(3):
        write_png(root / f"{i}.png", pixels(4, 4, 3, seed=i))
    decoded = []
    monkeypatch.setattr("vae_common.images._decode", lambda *a: decoded.append(a))
    with pytest.raises(DataError, match="3 images of 3x4x4 are 144 bytes, more than the 143"):
        load_image_dir(root, max_bytes=143)
    with pytest.raises(DataError, match=r"3 images of 3x600x500 are 2700000 bytes"):
        load_image_dir(root, resize=(600, 500), max_bytes=10**6)
    assert not decoded


def test_options_a_format_does_not_take(tmp_path):
    with pytest.raises(DataError, match=r"'digits' does not take resize .*; color"):
        load_dataset("digits", resize=(4, 4), color="rgb")
    path = save_npz(tmp_path / "o.npz", x_train=pixels(2, 4, 4), x_test=pixels(2, 4, 4))
    with pytest.raises(DataError, match="does not take resize"):
        load_dataset(f"npz:{path}", resize=(4, 4))
    with pytest.raises(DataError, match="does not take layout 'nhwc'"):
        load_dataset(f"images:{tmp_path}", layout="nhwc")
    with pytest.raises(DataError, match="cannot be loaded from the record"):
        load_dataset(DataSource("arrays"))


# The record.


def test_data_source_json_round_trip_and_reload(tmp_path):
    root = tmp_path / "imgs"
    for i in range(4):
        write_png(root / f"{i}.png", pixels(5, 5, 3, seed=i))
    ds = load_dataset(f"images:{root}", resize=(3, 4), color="gray", split_seed=7)
    source = ds.source
    assert source == DataSource(f"images:{root}", "auto", (3, 4), "gray", 0.1, 7)
    text = source.to_json()
    assert json.loads(text)["resize"] == [3, 4]
    assert DataSource.from_json(text) == source
    again = load_dataset(DataSource.from_json(text))
    np.testing.assert_array_equal(again.train, ds.train)
    np.testing.assert_array_equal(again.test, ds.test)
    assert DataSource.from_dict({"spec": "digits"}) == DataSource("digits")
    for bad, message in (
        ('{"spec": "digits", "layuot": "auto"}', r"unknown keys \['layuot'\]"),
        ('{"layout": "auto"}', "needs its 'spec'"),
        ('{"spec": "npz:f", "layout": "hwc"}', "layout must be one of"),
        ('{"spec": "images:d", "resize": [0, 3]}', "resize must be"),
        ('{"spec": "digits", "binarize": "yes"}', "binarize must be one of"),
        ("[1]", "must be a JSON object"),
        ("{", "must be JSON"),
    ):
        with pytest.raises(DataError, match=message):
            DataSource.from_json(bad)


def test_recorded_source_in_checkpoint_metadata(tmp_path):
    from vae_common.checkpoint import (
        DATA_KEY,
        CheckpointError,
        data_metadata,
        load_checkpoint,
        recorded_source,
        save_checkpoint,
    )
    from vae_common.config import VAEConfig
    from vae_common.spec import init_canonical

    config = VAEConfig(input_shape=(1, 4, 4), hidden=(4,), latent_dim=2)
    source = DataSource("npz:/data/x.npz", "nhwc", test_fraction=0.2, binarize="dynamic")
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, init_canonical(config), config, data_metadata(source))
    meta = load_checkpoint(path)[2]
    assert recorded_source(meta, path) == source
    assert recorded_source({"dataset": "digits"}) is None  # written before the key existed
    with pytest.raises(CheckpointError, match=r"c\.safetensors: its recorded data source"):
        recorded_source({DATA_KEY: '{"spec": "digits", "layout": 3}'}, path)


# The command line, end to end (one epoch of a tiny model each).


def vae_train(capsys, tmp_path, dataset, *flags):
    """``vae train --backend torch`` for one epoch; returns (status, stderr, run directory)."""
    out = tmp_path / "run"
    argv = ["train", "--backend", "torch", "--dataset", dataset, "--epochs", "1"]
    argv += ["--batch-size", "8", "--hidden", "8", "--latent-dim", "2", "--out", str(out)]
    from vae_tools import cli

    capsys.readouterr()
    status = cli.main([*argv, "--quiet", *flags])
    return status, capsys.readouterr().err, out


def recorded(out):
    from vae_common.checkpoint import load_checkpoint, recorded_source

    state, config, meta = load_checkpoint(out / "checkpoint.safetensors")
    return config, recorded_source(meta)


def test_cli_channels_last_npz_trains_and_plots(tmp_path, capsys):
    # The case: (N, 32, 32, 3) was read as 32 channels of 32x3 images and died in the
    # plots after a whole epoch. Smaller images, the same layout.
    x, t = pixels(24, 8, 8, 3), pixels(8, 8, 8, 3, seed=1)
    path = save_npz(tmp_path / "rgb.npz", x_train=x, y_train=np.arange(24) % 3, x_test=t,
                    y_test=np.arange(8) % 3)  # fmt: skip
    status, err, out = vae_train(capsys, tmp_path, f"npz:{path}")
    assert status == 0, err
    config, source = recorded(out)
    assert config.input_shape == (3, 8, 8)
    assert source == DataSource(f"npz:{path}", "nhwc")
    for name in ("reconstructions.png", "samples.png", "loss_curves.png", "latent_space.png"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("shape", [(16, 3, 8, 3), (16, 4, 4, 4)])
def test_cli_ambiguous_layout_is_bad_input_before_training(tmp_path, capsys, shape):
    path = save_npz(tmp_path / "amb.npz", x_train=pixels(*shape), x_test=pixels(*shape))
    status, err, out = vae_train(capsys, tmp_path, f"npz:{path}")
    assert status == 2
    assert f"have shape {shape}, an ambiguous layout" in err and "--layout" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / "checkpoint.safetensors").exists()
    status, err, out = vae_train(capsys, tmp_path, f"npz:{path}", "--layout", "nchw")
    assert status == 0, err
    assert recorded(out)[0].input_shape == (shape[1], shape[2], shape[3])
    # vae generate reads the recorded layout; a --dataset given again needs its --layout again.
    from vae_tools import cli

    gen = ["generate", "reconstruct", "--checkpoint", str(out / "checkpoint.safetensors")]
    gen += ["--backend", "torch", "--n", "4", "--overwrite"]
    assert cli.main([*gen, "--out", str(tmp_path / "g1")]) == 0
    assert np.load(tmp_path / "g1" / "reconstructions.npy").shape == (4, *shape[1:])
    capsys.readouterr()
    assert cli.main([*gen, "--out", str(tmp_path / "g2"), "--dataset", f"npz:{path}"]) == 2
    assert "an ambiguous layout" in capsys.readouterr().err
    again = [*gen, "--out", str(tmp_path / "g2"), "--dataset", f"npz:{path}", "--layout", "nchw"]
    assert cli.main(again) == 0


def test_cli_npz_without_labels(tmp_path, capsys):
    path = save_npz(tmp_path / "grey.npz", x=pixels(40, 6, 6))
    status, err, out = vae_train(capsys, tmp_path, f"npz:{path}")
    assert status == 0, err
    assert (out / "latent_space.png").is_file()  # one colour: no labels
    assert recorded(out)[1] == DataSource(f"npz:{path}", "nhw", test_fraction=0.1)


def test_cli_image_folder_with_resize_and_color_is_recorded_and_reloads(tmp_path, capsys):
    root = tmp_path / "pics"
    for i in range(20):
        shape = (6, 5) if i % 2 else (7, 7, 3)  # two sizes, grey and colour
        write_png(root / ("a" if i % 3 else "b") / f"{i}.png", pixels(*shape, seed=i))
    status, err, _ = vae_train(capsys, tmp_path, f"images:{root}")
    assert status == 2 and "mixes grey and colour" in err and "--color" in err
    status, err, _ = vae_train(capsys, tmp_path, f"images:{root}", "--color", "rgb")
    assert status == 2 and "different sizes" in err and "--resize H,W" in err
    flags = ("--resize", "4,4", "--color", "rgb", "--binarize", "static")
    status, err, out = vae_train(capsys, tmp_path, f"images:{root}", *flags)
    assert status == 0, err
    config, source = recorded(out)
    assert config.input_shape == (3, 4, 4)
    assert source == DataSource(f"images:{root}", "auto", (4, 4), "rgb", 0.1, 0, "static")
    manifest = json.loads((out / "run.json").read_text())
    assert DataSource.from_dict(manifest["settings"]["data"]) == source
    again = load_dataset(source)
    direct = load_dataset(f"images:{root}", resize=(4, 4), color="rgb")
    np.testing.assert_array_equal(again.train, direct.train)
    np.testing.assert_array_equal(again.test_labels, direct.test_labels)
    assert again.classes == ("a", "b")


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--resize", "4,4"), "does not take resize"),
        (("--color", "gray"), "does not take color"),
        (("--layout", "nhwc"), "does not take layout 'nhwc'"),
    ],
)
def test_cli_options_digits_does_not_take(tmp_path, capsys, flags, message):
    status, err, _ = vae_train(capsys, tmp_path, "digits", *flags)
    assert status == 2 and message in err


def test_cli_resize_must_be_two_positive_integers(tmp_path, capsys):
    from vae_tools import cli

    for bad in ("4", "4,0", "a,b", "4,4,4"):
        with pytest.raises(SystemExit) as info:
            cli.main(["train", "--backend", "torch", "--out", str(tmp_path), "--resize", bad])
        assert info.value.code == 2
        assert "expected H,W" in capsys.readouterr().err


def test_run_train_with_arrays(tmp_path):
    from vae_common.checkpoint import load_checkpoint, recorded_source
    from vae_common.config import VAEConfig
    from vae_common.training import TrainConfig
    from vae_tools import run

    ds = Dataset.from_arrays(pixels(40, 6, 6, 1), name="mine")
    config = VAEConfig(input_shape=(1, 6, 6), hidden=(8,), latent_dim=2)
    settings = run.RunSettings("mine", batch_size=8)
    metrics = run.train(tmp_path / "r", "torch", config, TrainConfig(), settings, 1, dataset=ds,
                        progress=False, device="cpu")  # fmt: skip
    assert metrics and metrics[-1]["epoch"] == 1
    source = recorded_source(load_checkpoint(tmp_path / "r" / "checkpoint.safetensors")[2])
    assert source == DataSource("arrays", "nhwc", test_fraction=0.1)
    with pytest.raises(DataError, match="pass the arrays again"):
        load_dataset(source)
