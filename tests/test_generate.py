"""Generation from a checkpoint (``vae_tools.generate``, ``vae generate``): both backends give the
same samples, reconstructions, interpolations and latent means for the same checkpoint and
noise (float64: 1e-12), each meets a numpy reference, and the command writes its files with the
right shapes, refusing (exit 2, naming the file) to overwrite any."""

from __future__ import annotations

import numpy as np
import pytest

from vae_common import reference
from vae_common.checkpoint import load_checkpoint, save_checkpoint
from vae_common.compare import TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.data import Dataset, load_digits, standard_normal
from vae_common.errors import ConfigError, ShapeError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_tools import cli, generate, run

CONFIG = VAEConfig(input_shape=(1, 8, 8), hidden=(32,), latent_dim=3)
BACKENDS = ("jax", "torch")
TOL = TOLERANCES["float64"]


def vae(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``vae ARGV`` in this process; returns (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def digits() -> Dataset:
    ds = load_digits()
    return Dataset(
        "digits", ds.train[:512], ds.test[:40], ds.train_labels[:512], ds.test_labels[:40]
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    """A checkpoint trained two epochs on a digits slice (torch, float64) by ``run.train``."""
    out = tmp_path_factory.mktemp("gen-run")
    settings = run.RunSettings("digits", batch_size=64, seed=0, dtype="float64")
    metrics = run.train(
        out,
        "torch",
        CONFIG,
        TrainConfig(),
        settings,
        epochs=2,
        dataset=digits,
        progress=False,
        plots=False,
    )
    assert [m["epoch"] for m in metrics] == [1, 2]
    return out / "checkpoint.safetensors"


@pytest.fixture(scope="module")
def generators(checkpoint):
    return {b: generate.load_generator(checkpoint, b, dtype="float64") for b in BACKENDS}


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def test_prior_samples_agree_across_backends_and_with_numpy(generators, checkpoint):
    state, config, _ = load_checkpoint(checkpoint)
    samples = {b: g.prior_samples(9, seed=3) for b, g in generators.items()}
    assert samples["jax"].shape == (9, 1, 8, 8) and samples["jax"].dtype == np.float64
    assert rel_diff(samples["jax"], samples["torch"]) <= TOL
    z = standard_normal(3, generate.PRIOR_STREAM, (9, 3))
    np.testing.assert_array_equal(generate.prior_noise(9, 3, 3), z)
    expected = sigmoid(reference._mlp_decode(state, config, z)).reshape(9, 1, 8, 8)
    assert rel_diff(samples["torch"], expected) <= TOL
    # Another seed is other noise; the same seed the same images.
    assert rel_diff(generators["jax"].prior_samples(9, seed=4), samples["jax"]) > 1e-3
    np.testing.assert_array_equal(generators["jax"].prior_samples(9, seed=3), samples["jax"])


def test_reconstructions_and_latent_means_agree_and_meet_numpy(generators, checkpoint, digits):
    state, config, _ = load_checkpoint(checkpoint)
    x = digits.test
    recon = {b: g.reconstructions(x) for b, g in generators.items()}
    means = {b: g.encode_dataset(x, batch_size=7) for b, g in generators.items()}
    assert recon["jax"].shape == x.shape and means["jax"].shape == (len(x), 3)
    assert rel_diff(recon["jax"], recon["torch"]) <= TOL
    assert rel_diff(means["jax"], means["torch"]) <= TOL
    # At eps = 0 the numpy forward pass decodes the posterior mean.
    logits, mean, _ = reference.mlp_forward(state, config, x.astype(np.float64), np.zeros((40, 3)))
    assert rel_diff(means["torch"], mean) <= TOL
    assert rel_diff(recon["torch"], sigmoid(logits)) <= TOL
    # Batching does not change the result.
    np.testing.assert_allclose(generators["torch"].encode_dataset(x), means["torch"], rtol=1e-13)


def test_interpolation_is_linear_between_the_posterior_means(generators, digits):
    x_a, x_b = digits.test[[0, 2]], digits.test[[1, 3]]
    images = {b: g.interpolate(x_a, x_b, steps=5) for b, g in generators.items()}
    assert images["jax"].shape == (2, 5, 1, 8, 8)
    assert rel_diff(images["jax"], images["torch"]) <= TOL
    gen = generators["torch"]
    z = gen.interpolation_latents(x_a, x_b, 5)
    mean_a, mean_b = gen.encode_dataset(x_a), gen.encode_dataset(x_b)
    for k, t in enumerate(np.linspace(0, 1, 5)):
        np.testing.assert_allclose(z[:, k], (1 - t) * mean_a + t * mean_b, rtol=1e-14, atol=1e-15)
    # The ends decode the two images' posterior means: their reconstructions.
    np.testing.assert_allclose(images["torch"][:, 0], gen.reconstructions(x_a), rtol=1e-13)
    np.testing.assert_allclose(images["torch"][:, -1], gen.reconstructions(x_b), rtol=1e-13)
    # One pair of single images gives (steps, C, H, W).
    single = gen.interpolate(digits.test[0], digits.test[1], 4)
    assert single.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(single[0], images["torch"][0, 0], rtol=1e-13)


def test_bad_arguments_are_refused(generators, digits):
    gen = generators["jax"]
    with pytest.raises(ConfigError, match="steps must be an integer >= 2"):
        gen.interpolate(digits.test[0], digits.test[1], 1)
    with pytest.raises(ShapeError, match="x_a holds 2 images but x_b 1"):
        gen.interpolate(digits.test[:2], digits.test[:1], 3)
    with pytest.raises(ConfigError, match="n must be an integer >= 1"):
        gen.prior_samples(0)
    with pytest.raises(ShapeError, match=r"x has shape \(3, 1, 4, 4\)"):
        gen.reconstructions(np.zeros((3, 1, 4, 4)))
    with pytest.raises(ConfigError, match="batch_size"):
        gen.encode_dataset(digits.test, batch_size=0)


def generate_cli(capsys, what, checkpoint, backend, out, *extra):
    return vae(
        capsys,
        "generate",
        what,
        "--checkpoint",
        str(checkpoint),
        "--backend",
        backend,
        "--out",
        str(out),
        "--dtype",
        "float64",
        *extra,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_writes_every_file_with_its_shape(capsys, tmp_path, checkpoint, backend):
    out = tmp_path / backend
    for what, extra in (
        ("samples", ("--n", "12", "--seed", "2")),
        # No --dataset: the checkpoint records "digits".
        ("reconstruct", ("--n", "10")),
        ("interpolate", ("--pair", "0", "1", "--pair", "5", "9", "--steps", "6")),
        ("encode", ("--n", "50", "--split", "train")),
    ):
        status, stdout, err = generate_cli(capsys, what, checkpoint, backend, out, *extra)
        assert status == 0, err
        assert all(line.startswith(str(out)) for line in stdout.splitlines())
    shapes = {
        "samples.npy": (12, 1, 8, 8),
        "samples_z.npy": (12, 3),
        "reconstructions.npy": (10, 1, 8, 8),
        "interpolation.npy": (2, 6, 1, 8, 8),
        "interpolation_z.npy": (2, 6, 3),
        "latent_means.npy": (50, 3),
        "labels.npy": (50,),
    }
    for name, shape in shapes.items():
        assert np.load(out / name).shape == shape, name
    for name in ("samples.png", "reconstructions.png", "interpolation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ds = load_digits()
    np.testing.assert_array_equal(np.load(out / "labels.npy"), ds.train_labels[:50])
    np.testing.assert_array_equal(
        np.load(out / "samples_z.npy"), standard_normal(2, generate.PRIOR_STREAM, (12, 3))
    )
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_cli_outputs_agree_across_backends(capsys, tmp_path, checkpoint):
    for backend in BACKENDS:
        for what in ("samples", "reconstruct", "interpolate", "encode"):
            status, _, err = generate_cli(capsys, what, checkpoint, backend, tmp_path / backend)
            assert status == 0, err
    for name in (
        "samples.npy",
        "reconstructions.npy",
        "interpolation.npy",
        "interpolation_z.npy",
        "latent_means.npy",
    ):
        jax_out, torch_out = np.load(tmp_path / "jax" / name), np.load(tmp_path / "torch" / name)
        assert rel_diff(jax_out, torch_out) <= TOL, name
    # The defaults: 64 samples, 32 reconstructions, 4 pairs of 10 steps, the whole test split.
    assert np.load(tmp_path / "jax" / "samples.npy").shape == (64, 1, 8, 8)
    assert np.load(tmp_path / "jax" / "reconstructions.npy").shape == (32, 1, 8, 8)
    assert np.load(tmp_path / "jax" / "interpolation.npy").shape == (4, 10, 1, 8, 8)
    assert np.load(tmp_path / "jax" / "latent_means.npy").shape == (297, 3)


def test_cli_refuses_to_overwrite_and_names_the_file(capsys, tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.npy").write_bytes(b"keep me")
    status, _, err = generate_cli(capsys, "samples", checkpoint, "torch", out)
    assert status == 2
    assert (
        err.strip()
        == f"vae generate: error: {out / 'samples.npy'} exists; pass --overwrite to replace it"
    )
    assert (out / "samples.npy").read_bytes() == b"keep me"
    assert not (out / "samples.png").exists()
    status, _, err = generate_cli(capsys, "samples", checkpoint, "torch", out, "--overwrite")
    assert status == 0, err
    assert np.load(out / "samples.npy").shape == (64, 1, 8, 8)


def test_cli_refusals_exit_2(capsys, tmp_path, checkpoint):
    # A checkpoint that does not record its dataset needs --dataset.
    bare = tmp_path / "bare.safetensors"
    state, config, _ = load_checkpoint(checkpoint)
    save_checkpoint(bare, state, config)
    status, _, err = generate_cli(capsys, "reconstruct", bare, "jax", tmp_path / "a")
    assert status == 2 and "does not record the dataset" in err and "--dataset" in err
    status, _, err = generate_cli(
        capsys, "reconstruct", bare, "jax", tmp_path / "a", "--dataset", "digits"
    )
    assert status == 0, err
    # An index past the images, a dataset of another image size, --out a file, a bad .npy.
    status, _, err = generate_cli(
        capsys, "interpolate", checkpoint, "torch", tmp_path / "b", "--pair", "0", "297"
    )
    assert status == 2 and "--pair 0 297" in err and "297 images" in err
    idx = tmp_path / "other.safetensors"
    big = VAEConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=2)
    save_checkpoint(idx, init_canonical(big, 0), big, {"dataset": "digits"})
    status, _, err = generate_cli(capsys, "encode", idx, "torch", tmp_path / "c")
    assert status == 2 and "(1, 8, 8)" in err and "(1, 4, 4)" in err
    (tmp_path / "file").write_text("x")
    status, _, err = generate_cli(capsys, "samples", checkpoint, "torch", tmp_path / "file")
    assert status == 2 and "is not a directory" in err
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    status, _, err = generate_cli(
        capsys, "reconstruct", checkpoint, "torch", tmp_path / "d", "--images", str(bad)
    )
    assert status == 2 and str(bad) in err
    status, _, err = generate_cli(
        capsys, "samples", tmp_path / "missing.safetensors", "jax", tmp_path / "e"
    )
    assert status == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "generate",
                "interpolate",
                "--checkpoint",
                str(checkpoint),
                "--backend",
                "jax",
                "--out",
                str(tmp_path / "f"),
                "--steps",
                "1",
            ]
        )
    assert exc.value.code == 2


def test_cli_images_file(capsys, tmp_path, checkpoint, generators, digits):
    images = tmp_path / "images.npy"
    np.save(images, digits.test[:6])
    status, _, err = generate_cli(
        capsys, "encode", checkpoint, "jax", tmp_path / "out", "--images", str(images)
    )
    assert status == 0, err
    assert not (tmp_path / "out" / "labels.npy").exists()
    expected = generators["jax"].encode_dataset(digits.test[:6])
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "latent_means.npy"), expected)


def test_the_recorded_data_source_is_loaded_again(tmp_path, checkpoint, capsys):
    from vae_common.checkpoint import data_metadata
    from vae_common.data import DataSource

    state, config, _ = load_checkpoint(checkpoint)
    recorded = tmp_path / "recorded.safetensors"
    save_checkpoint(recorded, state, config, data_metadata(DataSource("digits", binarize="static")))
    gen = generate.load_generator(recorded, "torch", dtype="float64")
    assert gen.dataset == "digits" and gen.source.binarize == "static"
    ds = gen.load_data()
    assert ds.test.shape == (297, 1, 8, 8)
    # Grey levels, not binarized: generation reconstructs the images as they are.
    assert 0 < np.mean((ds.test > 0) & (ds.test < 1))
    # Arrays given from Python cannot be loaded again: --dataset is needed.
    arrays = tmp_path / "arrays.safetensors"
    save_checkpoint(arrays, state, config, data_metadata(DataSource("arrays")))
    status, _, err = generate_cli(capsys, "encode", arrays, "torch", tmp_path / "out")
    assert status == 2 and "trained on arrays given from Python" in err and "--dataset" in err
