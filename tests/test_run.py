"""Training runs on disk (``vae_tools.run``): files, plots, resume, refusals, divergence, kill -9.
(The run directory's protocol in detail, and its refusals: ``test_run_dir.py``; kills at every
file write: ``test_run_kills.py``.)

The runs use a small slice of the bundled digits passed as ``dataset=`` (no I/O), except the
kill -9 test, which runs ``vae train`` in a subprocess on IDX files written to ``tmp_path``. Torch
runs on the CPU with one thread (two are ten times slower on a busy machine, and bit-exact
comparisons need the same thread count on both sides).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from idx_files import write_idx_dir
from run_helpers import (
    CONFIG,
    SETTINGS,
    STEPS_PER_EPOCH,
    TRAIN,
    assert_manifest_holds,
    assert_same_run,
    file_bytes,
    manifest,
    read_metrics,
    train_run,
)
from run_helpers import small_digits as load_small_digits

from vae_common.checkpoint import load_checkpoint, load_tensors, save_tensors
from vae_common.data import Dataset
from vae_common.errors import ResumeError, TrainingError
from vae_common.training import TrainConfig, optimizer_state_names
from vae_tools import cli, run, run_state

RUN_FILES = {
    "run.json",
    ".vae-train.lock",
    "train_state.safetensors",
    "checkpoint.safetensors",
    "metrics.jsonl",
}
PLOTS = {"reconstructions.png", "samples.png", "loss_curves.png", "latent_space.png"}
METRIC_KEYS = {"epoch", "step", "train_loss", "seconds"}
HELD_OUT_KEYS = {"test_neg_elbo", "test_reconstruction", "test_kl"}
# What atomic_write_bytes leaves behind if killed mid-write: a hidden, clearly temporary name.
TEMP_FILE = re.compile(
    r"^\.(run\.json|train_state\.safetensors|checkpoint\.safetensors|metrics\.jsonl)\..*\.tmp$"
)


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    return load_small_digits()


def test_run_writes_checkpoint_metrics_and_plots(tmp_path, small_digits):
    out = tmp_path / "run"
    metrics = train_run(out, small_digits, 2, plots=True)
    assert {p.name for p in out.iterdir()} == RUN_FILES | PLOTS

    state, config, meta = load_checkpoint(out / "checkpoint.safetensors", expected_config=CONFIG)
    assert config == CONFIG
    assert (meta["epoch"], meta["backend"], meta["dataset"]) == ("2", "torch", "digits-small")
    tensors, train_meta = load_tensors(out / "train_state.safetensors")
    assert (train_meta["epoch"], train_meta["step"]) == ("2", str(2 * STEPS_PER_EPOCH))
    for name, value in state.items():
        np.testing.assert_array_equal(tensors[run_state.PARAM + name], value)
    assert set(tensors) == {run_state.PARAM + n for n in state} | set(optimizer_state_names(CONFIG))

    lines = read_metrics(out)
    assert lines == metrics
    assert [m["epoch"] for m in lines] == [1, 2]
    assert_manifest_holds(out, 2)
    assert set(manifest(out)["files"]) == RUN_FILES - {"run.json", ".vae-train.lock"} | PLOTS
    for m in lines:
        assert METRIC_KEYS <= set(m)
        assert all(np.isfinite(m[k]) for k in METRIC_KEYS)
        # No validation split and no --test-every-epoch: the test set is not looked at per epoch.
        assert not [k for k in m if k.startswith(("test_", "val_"))], m
        assert len(m["train_losses"]) == STEPS_PER_EPOCH
        assert m["backend"] == "torch"
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    # The test set, once, at the end: in run.json, for the last checkpoint (no best without a
    # validation split).
    results = run.test_results(out)
    assert set(results) == {"epoch", "binarize", "seed", "stopped_early", "last"}
    last = results["last"]
    assert (last["epoch"], last["n"], results["binarize"]) == (2, 64, "none")
    assert last["neg_elbo"] == pytest.approx(last["reconstruction"] + last["kl"])
    again = run.evaluate_checkpoint(out / "checkpoint.safetensors", "torch", data=small_digits)
    assert again["neg_elbo"] == pytest.approx(last["neg_elbo"], rel=1e-6)

    import matplotlib.image

    for name in PLOTS:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 50, (name, image.shape)
        assert float(np.std(image)) > 0, f"{name} is blank"


def test_no_latent_space_plot_unless_two_dimensional(tmp_path, small_digits):
    out = tmp_path / "run"
    train_run(out, small_digits, 1, config=CONFIG.replace(latent_dim=3), plots=True)
    assert {p.name for p in out.iterdir()} == RUN_FILES | PLOTS - {"latent_space.png"}


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_resume_after_two_of_four_epochs_is_bit_exact(backend, tmp_path, small_digits):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train_run(full, small_digits, 4, backend)
    first = train_run(resumed, small_digits, 2, backend)
    assert len(first) == 2
    metrics = train_run(resumed, small_digits, 4, backend, resume=True)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert_same_run(resumed, full)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_digits) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    train_run(out, small_digits, 1)
    return out


CHANGES = {
    "hidden": {"config": CONFIG.replace(hidden=(16,))},
    "latent_dim": {"config": CONFIG.replace(latent_dim=3)},
    "lr": {"train": TrainConfig(lr=1e-2)},
    "beta": {"train": dataclasses.replace(TRAIN, beta=0.5)},
    "batch_size": {"settings": dataclasses.replace(SETTINGS, batch_size=16)},
    "seed": {"settings": dataclasses.replace(SETTINGS, seed=1)},
    "dtype": {"settings": dataclasses.replace(SETTINGS, dtype="float64")},
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_resume_with_other_settings_is_refused_naming_the_field(field, finished_run, small_digits):
    before = file_bytes(finished_run)
    with pytest.raises(ResumeError, match=f'"{field}"') as info:
        train_run(finished_run, small_digits, 2, resume=True, **CHANGES[field])
    assert "--resume refused" in str(info.value)
    assert file_bytes(finished_run) == before


def test_starting_over_an_existing_run_is_refused(finished_run, small_digits):
    before = file_bytes(finished_run)
    with pytest.raises(ResumeError, match="already holds a training run.*--resume"):
        train_run(finished_run, small_digits, 2)
    assert file_bytes(finished_run) == before


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_divergence_stops_with_the_epoch_and_step(backend, tmp_path, small_digits):
    # A Gaussian decoder with lr=1e8: Adam moves every weight by ~1e8 in the first step, and the
    # second step's squared error overflows float32.
    out = tmp_path / "run"
    config = CONFIG.replace(likelihood="gaussian")
    message = r"loss became (inf|nan) at epoch 1, step 2 of 8"
    with pytest.raises(TrainingError, match=message) as info:
        train_run(out, small_digits, 3, backend, config=config, train=TrainConfig(lr=1e8))
    assert "No checkpoint was written" in str(info.value)
    assert not (out / "checkpoint.safetensors").exists()
    assert not (out / "train_state.safetensors").exists()


def test_nan_after_good_epochs_keeps_the_last_good_checkpoint(tmp_path, small_digits, monkeypatch):
    out = tmp_path / "run"
    train_run(out, small_digits, 2)
    good_state = load_checkpoint(out / "checkpoint.safetensors")[0]
    before = file_bytes(out)

    import vae_torch.train

    original = vae_torch.train.Trainer.train_epoch

    def nan_in_epoch_3(self, data, batches, seed, epoch):
        losses = original(self, data, batches, seed, epoch)
        if epoch == 3:
            losses[3] = np.nan
        return losses

    monkeypatch.setattr(vae_torch.train.Trainer, "train_epoch", nan_in_epoch_3)
    with pytest.raises(TrainingError, match=r"at epoch 3, step 4 of 8") as info:
        train_run(out, small_digits, 4, resume=True)
    assert f"checkpoint (epoch 2) is kept in {out}" in str(info.value)
    assert file_bytes(out) == before
    state, _, meta = load_checkpoint(out / "checkpoint.safetensors", expected_config=CONFIG)
    assert meta["epoch"] == "2"
    assert all(np.array_equal(state[n], good_state[n]) for n in good_state)

    # The run is still resumable from the good epoch once the cause is gone.
    monkeypatch.setattr(vae_torch.train.Trainer, "train_epoch", original)
    metrics = train_run(out, small_digits, 3, resume=True)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]


def test_resume_after_a_kill_in_the_middle_of_saving(tmp_path, small_digits):
    # The worst moment for a kill -9, set up by hand: epoch 3's metrics line is written, its
    # train state is not, the checkpoint is still epoch 1's (the kill came between epoch 2's
    # state and checkpoint writes), and a half-written temporary file is left behind.
    out, full = tmp_path / "crashed", tmp_path / "full"
    train_run(out, small_digits, 1)
    epoch_1_checkpoint = (out / "checkpoint.safetensors").read_bytes()
    train_run(out, small_digits, 2, resume=True)
    (out / "checkpoint.safetensors").write_bytes(epoch_1_checkpoint)
    lines = read_metrics(out)
    ghost = {**lines[-1], "epoch": 3, "train_loss": -1.0}
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines + [ghost]))
    (out / ".checkpoint.safetensors.x1y2z3.tmp").write_bytes(epoch_1_checkpoint[:100])

    metrics = train_run(out, small_digits, 3, resume=True)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[2]["train_loss"] != -1.0
    assert_manifest_holds(out, 3)
    train_run(full, small_digits, 3)
    assert_same_run(out, full)


def vae_command() -> list[str]:
    script = Path(sys.executable).with_name("vae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vae_tools.cli"]


@pytest.mark.slow
def test_kill_9_leaves_a_loadable_checkpoint_and_resume_finishes_the_run(tmp_path):
    # Torch: what is tested here is run_commit.py's write order and atomic files, the same for both
    # backends (JAX's resume is bit-exact by test_resume_after_two_of_four_epochs_is_bit_exact).
    # The resumed and the reference runs go through the same CLI in this process; torch's float32
    # maths does not depend on JAX's x64 switch, which this session has on.
    data = tmp_path / "idx"
    write_idx_dir(data, n_train=512, n_test=128, size=8)
    epochs = 20
    args = [
        "train",
        "--backend",
        "torch",
        "--dataset",
        f"idx:{data}",
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--hidden",
        "32",
        "--latent-dim",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    killed, full = tmp_path / "killed", tmp_path / "full"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*vae_command(), *args, "--out", str(killed)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not (killed / "checkpoint.safetensors").exists():
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # a no-op if it has already exited
    finally:
        _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (
        f"vae train ended on its own before the kill (rc {proc.returncode}): {stderr.decode()}"
    )

    names = {p.name for p in killed.iterdir()}
    leftovers = names - RUN_FILES
    assert all(TEMP_FILE.match(n) for n in leftovers), f"unexpected files after kill: {leftovers}"
    assert {"checkpoint.safetensors", "train_state.safetensors", "run.json"} <= names
    # The manifest's epoch, or one ahead of it in the order the files are written.
    committed = manifest(killed)["epoch"]
    _, _, ckpt_meta = load_checkpoint(killed / "checkpoint.safetensors")
    _, state_meta = load_tensors(killed / "train_state.safetensors")
    done = int(state_meta["epoch"])
    assert done < epochs and done in (committed, committed + 1)
    assert int(ckpt_meta["epoch"]) in (committed, done)
    assert [m["epoch"] for m in read_metrics(killed)][:done] == list(range(1, done + 1))

    assert cli.main([*args, "--out", str(killed), "--resume"]) == 0
    assert cli.main([*args, "--out", str(full)]) == 0
    assert len(read_metrics(killed)) == epochs
    assert_same_run(killed, full)
    assert_manifest_holds(killed, epochs)


def test_a_run_written_before_the_renames_resumes(tmp_path, small_digits):
    # Version 0.1 stored Adam's epsilon as "eps" in the train state and the test -ELBO as
    # "test_elbo" in metrics.jsonl, and wrote no run.json; such a run resumes, its records are
    # read under the new names (adam_eps, test_neg_elbo), and it gains a manifest.
    out = tmp_path / "old"
    train_run(out, small_digits, 1, test_every_epoch=True)
    (out / "run.json").unlink()
    state_path = out / "train_state.safetensors"
    tensors, meta = load_tensors(state_path)
    train_json = json.loads(meta["train"])
    train_json["eps"] = train_json.pop("adam_eps")
    meta["train"] = json.dumps(train_json, sort_keys=True)
    save_tensors(state_path, tensors, meta)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    old = [{("test_elbo" if k == "test_neg_elbo" else k): v for k, v in r.items()} for r in records]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    metrics = train_run(out, small_digits, 2, resume=True, test_every_epoch=True)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(METRIC_KEYS | HELD_OUT_KEYS <= set(m) and "test_elbo" not in m for m in metrics)
    assert metrics[0]["test_neg_elbo"] == records[0]["test_neg_elbo"]
    assert_manifest_holds(out, 2)
