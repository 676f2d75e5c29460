"""The ``vae`` command in-process: ``train``, ``eval`` and ``parity --steps``, and its bad-input
errors (exit status 2 and one line on stderr naming the problem, never a traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from idx_files import write_idx_dir

from vae_common.checkpoint import load_checkpoint, save_checkpoint
from vae_common.compare import TOLERANCES, TRAJECTORY_TOLERANCES, rel_diff
from vae_common.config import VAEConfig
from vae_common.data import IDX_FILES
from vae_common.spec import init_canonical, param_spec
from vae_common.training import TrainConfig
from vae_tools import cli, run

EVAL_KEYS = {
    "neg_elbo",
    "reconstruction",
    "kl",
    "neg_iwae",
    "iwae_k",
    "n",
    "backend",
    "dtype",
    "dataset",
    "binarize",
    "seed",
}
DIGITS_CONFIG = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)


def vae(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``vae ARGV`` in this process; returns (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """``{backend: run directory}`` of ``vae train --epochs 1`` on digits (default model)."""
    root = tmp_path_factory.mktemp("cli-train")
    dirs = {}
    for backend in ("jax", "torch"):
        dirs[backend] = root / backend
        status = cli.main(
            [
                "train",
                "--backend",
                backend,
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--out",
                str(dirs[backend]),
                "--quiet",
            ]
        )
        assert status == 0
    return dirs


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_one_epoch_on_digits(backend, trained_runs):
    out = trained_runs[backend]
    state, config, meta = load_checkpoint(out / "checkpoint.safetensors")
    assert config == VAEConfig(input_shape=(1, 8, 8))  # the default MLP on 8x8 images
    assert (meta["epoch"], meta["backend"], meta["dataset"]) == ("1", backend, "digits")
    assert all(np.all(np.isfinite(v)) for v in state.values())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    assert (out / "reconstructions.png").is_file()


def test_train_prints_a_summary_line(tmp_path, capsys):
    status, out, err = vae(
        capsys,
        "train",
        "--backend",
        "torch",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--hidden",
        "16",
        "--latent-dim",
        "3",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert status == 0, err
    assert out.startswith("epoch 1: train loss ") and "checkpoint.safetensors" in out
    assert err == ""  # --quiet: no progress bar


@pytest.mark.parametrize("trained_in", ["jax", "torch"])
def test_eval_json_agrees_across_backends(trained_in, trained_runs, capsys):
    checkpoint = trained_runs[trained_in] / "checkpoint.safetensors"
    results = {}
    for backend in ("jax", "torch"):
        status, out, err = vae(
            capsys,
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--backend",
            backend,
            "--dataset",
            "digits",
            "--iwae-k",
            "10",
            "--json",
        )
        assert status == 0, err
        results[backend] = json.loads(out)
        assert set(results[backend]) == EVAL_KEYS
        assert results[backend]["backend"] == backend
        assert results[backend]["dtype"] == "float32"
        assert results[backend]["iwae_k"] == 10 and results[backend]["n"] == 297
        assert results[backend]["neg_iwae"] < results[backend]["neg_elbo"]
    tol = TOLERANCES["float32"]
    diffs = {
        k: rel_diff(results["jax"][k], results["torch"][k])
        for k in ("neg_elbo", "reconstruction", "kl", "neg_iwae")
    }
    assert all(d <= tol for d in diffs.values()), f"eval differs across backends: {diffs}"


def test_eval_text_output(trained_runs, capsys):
    status, out, err = vae(
        capsys,
        "eval",
        "--checkpoint",
        str(trained_runs["torch"] / "checkpoint.safetensors"),
        "--backend",
        "torch",
        "--iwae-k",
        "5",
    )
    assert status == 0, err
    assert "-ELBO" in out and "IWAE" in out and "(K=5 importance samples)" in out
    # The checkpoint's dataset, binarization and seed, as the run evaluated it.
    assert "297 test images of digits (binarization none, seed 0" in out


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Files the error cases point at."""
    root = tmp_path_factory.mktemp("cli-errors")
    checkpoint = root / "digits.safetensors"
    save_checkpoint(checkpoint, init_canonical(DIGITS_CONFIG, 0, "float32"), DIGITS_CONFIG)
    garbage = root / "garbage"
    garbage.mkdir()
    for name in IDX_FILES.values():
        (garbage / name).write_text("these are not IDX files\n")
    six = write_idx_dir(root / "six-by-six", n_train=64, n_test=16, size=6)
    # A finished run of DIGITS_CONFIG with the settings `vae train` uses by default.
    finished = root / "finished"
    run.train(
        finished,
        "torch",
        DIGITS_CONFIG,
        TrainConfig(),
        run.RunSettings("digits"),
        1,
        device="cpu",
        progress=False,
        plots=False,
    )
    return {
        "root": root,
        "checkpoint": checkpoint,
        "garbage": garbage,
        "six": six,
        "finished": finished,
    }


TRAIN = ["train", "--backend", "torch", "--epochs", "1", "--quiet"]
DIGITS_MODEL = ["--hidden", "16", "--latent-dim", "2"]

# name: (argv with {placeholders}, the command, a phrase the message must contain)
ERRORS = {
    "unknown dataset": (
        TRAIN + ["--dataset", "cifar", "--out", "{root}/o1"],
        "train",
        "unknown dataset 'cifar'",
    ),
    "unknown dataset kind": (
        TRAIN + ["--dataset", "cifar:{root}", "--out", "{root}/o2"],
        "train",
        "unknown dataset kind 'cifar'",
    ),
    "missing dataset directory": (
        TRAIN + ["--dataset", "mnist:{root}/nowhere", "--out", "{root}/o3"],
        "train",
        "does not exist",
    ),
    "files of the wrong format": (
        TRAIN + ["--dataset", "idx:{garbage}", "--out", "{root}/o4"],
        "train",
        "is not an IDX image or label file",
    ),
    "missing checkpoint": (
        ["eval", "--checkpoint", "{root}/none.safetensors", "--backend", "torch"],
        "eval",
        "does not exist",
    ),
    "checkpoint shape does not fit the dataset": (
        ["eval", "--checkpoint", "{checkpoint}", "--backend", "torch", "--dataset", "idx:{six}"],
        "eval",
        "(1, 6, 6) but checkpoint",
    ),
    "init checkpoint shape does not fit the dataset": (
        TRAIN + ["--init", "{checkpoint}", "--dataset", "idx:{six}", "--out", "{root}/o5"],
        "train",
        "expects images of shape (1, 8, 8)",
    ),
    "resume with a different config": (
        TRAIN
        + [
            "--dataset",
            "digits",
            "--hidden",
            "16",
            "--latent-dim",
            "3",
            "--out",
            "{finished}",
            "--resume",
        ],
        "train",
        "--latent-dim 3 (the run has 2)",
    ),
    "resume with a different learning rate": (
        TRAIN
        + ["--dataset", "digits", *DIGITS_MODEL, "--lr", "0.01", "--out", "{finished}", "--resume"],
        "train",
        "--lr 0.01 (the run has 0.001)",
    ),
    "existing run without --resume": (
        TRAIN + ["--dataset", "digits", *DIGITS_MODEL, "--out", "{finished}"],
        "train",
        "already holds a training run",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_exits_2_with_one_line(case, bad_inputs, capsys):
    template, command, phrase = ERRORS[case]
    argv = [a.format(**bad_inputs) for a in template]
    status, out, err = vae(capsys, *argv)
    assert status == cli.EXIT_BAD_INPUT, (status, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith(f"vae {command}: error: "), lines[0]
    assert phrase in lines[0], lines[0]


def test_divergence_exits_1_naming_epoch_and_step(tmp_path, capsys):
    status, out, err = vae(
        capsys,
        *TRAIN,
        "--dataset",
        "digits",
        *DIGITS_MODEL,
        "--likelihood",
        "gaussian",
        "--lr",
        "1e8",
        "--out",
        str(tmp_path / "run"),
    )
    assert status == cli.EXIT_FAILED
    assert len(err.strip().splitlines()) == 1
    # 1500 training images in batches of 128: 11 full batches and one of 92.
    assert "at epoch 1, step 2 of 12" in err and "No checkpoint was written" in err


def test_parity_steps_json_report(capsys):
    status, out, err = vae(
        capsys,
        "parity",
        "--steps",
        "5",
        "--json",
        "--input-shape",
        "1,6,5",
        "--hidden",
        "7,3",
        "--latent-dim",
        "3",
        "--batch-size",
        "16",
    )
    assert status == 0, err
    report = json.loads(out)
    keys = {"dtype", "loss", "grads", "params", "max_rel_diff", "tolerance", "passed"}
    assert keys <= set(report)
    assert report["dtype"] == "float64" and report["steps"] == 5
    assert report["tolerance"] == TRAJECTORY_TOLERANCES["float64"]
    config = VAEConfig(input_shape=(1, 6, 5), hidden=(7, 3), latent_dim=3)
    names = [s.name for s in param_spec(config)]
    assert list(report["params"]) == names and list(report["grads"]) == names
    assert len(report["loss_curve"]["jax"]) == 5
    assert report["passed"] is True
    assert report["max_rel_diff"] <= report["tolerance"]
