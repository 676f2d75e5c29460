"""The standard evaluation protocol of ``vae train`` and ``vae eval``: binarization, the
validation split, the best checkpoint, early stopping, the test set at the end, the last partial
batch; and the CLI that remembers (checkpoint and run defaults, ``--resume``, ``--config``,
``--help``, ``--version``) and the run's logging (progress lines, TensorBoard, metrics.jsonl).

Tiny data: an MNIST-shaped (28x28) IDX set written in ``tmp_path``, or a digits slice.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from idx_files import write_idx_dir
from run_helpers import CONFIG, SETTINGS, assert_same_run, read_metrics, train_run
from run_helpers import small_digits as load_small_digits

from vae_common.checkpoint import load_checkpoint, load_tensors
from vae_common.compare import rel_diff
from vae_common.data import Dataset, batch_indices, binarize, last_batch_indices, load_dataset
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_tools import cli, options, run, run_state
from vae_tools.run_dir import BEST

DIGITS = load_small_digits()
TEST_LINE = re.compile(r"test -ELBO (\d+\.\d+) nats \((.+)/(checkpoint|best)\.safetensors\)")


def vae(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def printed_test_figures(stdout: str) -> dict[str, float]:
    """``{"checkpoint" | "best": test -ELBO}`` from ``vae train``'s summary lines."""
    return {m.group(3): float(m.group(1)) for m in TEST_LINE.finditer(stdout)}


@pytest.fixture(scope="module")
def mnist_shaped(tmp_path_factory) -> Path:
    """An MNIST-shaped IDX directory: 28x28 grey images, 300 train, 64 test."""
    return write_idx_dir(tmp_path_factory.mktemp("idx") / "mnist", n_train=300, n_test=64, size=28)


MODEL = ["--hidden", "32", "--latent-dim", "4"]


# -- binarization: what vae train prints is what vae eval reproduces -------------------------


@pytest.fixture(scope="module")
def dynamic_run(mnist_shaped, tmp_path_factory):
    """``vae train --binarize dynamic --val-split 50`` on the MNIST-shaped data (torch):
    (run directory, its stdout)."""
    out = tmp_path_factory.mktemp("dynamic") / "run"
    argv = ["train", "--backend", "torch", "--dataset", f"mnist:{mnist_shaped}", *MODEL]
    argv += ["--binarize", "dynamic", "--val-split", "50", "--epochs", "2", "--batch-size", "64"]
    argv += ["--device", "cpu", "--quiet", "--out", str(out)]
    status = cli.main(argv)
    assert status == 0
    return out


def test_vae_eval_reproduces_the_dynamically_binarized_test_figure_vae_train_printed(
    mnist_shaped, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["train", "--backend", "torch", "--dataset", f"mnist:{mnist_shaped}", *MODEL]
    argv += ["--binarize", "dynamic", "--val-split", "50", "--epochs", "2", "--batch-size", "64"]
    status, stdout, err = vae(capsys, *argv, "--device", "cpu", "--quiet", "--out", str(out))
    assert status == 0, err
    printed = printed_test_figures(stdout)
    assert set(printed) == {"checkpoint", "best"}, stdout

    # Nothing but the checkpoint (or the run directory): the dataset, the binarization, the
    # seed and the dtype come from what it records.
    for name, target in (("checkpoint", out), ("best", out / "best.safetensors")):
        for backend in ("torch", "jax"):
            status, got, err = vae(
                capsys, "eval", "--checkpoint", str(target), "--backend", backend, "--json"
            )
            assert status == 0, err
            result = json.loads(got)
            assert (result["binarize"], result["seed"], result["n"]) == ("dynamic", 0, 64)
            assert result["dataset"] == f"mnist:{mnist_shaped}"
            # The same backend: the same number (printed to 6 decimals); the other backend's
            # float32 arithmetic differs in the last bits (relative 1e-6).
            if backend == "torch":
                assert abs(result["neg_elbo"] - printed[name]) <= 1e-6, (name, result)
            else:
                assert rel_diff(result["neg_elbo"], printed[name]) <= 1e-6, (name, result)
    # The backend defaults to the one that trained it; the text output names the protocol.
    status, text, err = vae(capsys, "eval", "--checkpoint", str(out))
    assert status == 0, err
    assert "torch float32 on 64 test images" in text and "binarization dynamic, seed 0" in text
    assert f"{printed['checkpoint']:.6f}" in text

    # The bug this fixes: the figure is of binary images, not the grey levels the run was not
    # trained on (a grey-level evaluation gives another number).
    status, grey, err = vae(
        capsys, "eval", "--checkpoint", str(out), "--binarize", "none", "--json"
    )
    assert status == 0, err
    assert abs(json.loads(grey)["neg_elbo"] - printed["checkpoint"]) > 1e-3


def test_the_held_out_images_are_fixed_seeded_draws(mnist_shaped):
    ds = load_dataset(f"mnist:{mnist_shaped}")
    settings = run.RunSettings("m", batch_size=64, seed=3, val_split=50)
    data = run.run_data(settings, ds, "dynamic")
    # The documented rule, spelled out: test default_rng([seed, 8]), validation [seed, 9], the
    # split a permutation of default_rng([seed, 6]), both parts in the dataset's order.
    np.testing.assert_array_equal(data.test, binarize(ds.test, np.random.default_rng([3, 8])))
    held = np.sort(np.random.default_rng([3, 6]).permutation(300)[:50])
    kept = np.setdiff1d(np.arange(300), held)
    np.testing.assert_array_equal(data.val, binarize(ds.train[held], np.random.default_rng([3, 9])))
    np.testing.assert_array_equal(data.train, ds.train[kept])  # grey: drawn per batch on device
    np.testing.assert_array_equal(data.val_labels, ds.train_labels[held])
    assert set(np.unique(data.test)) == set(np.unique(data.val)) == {0.0, 1.0}
    # Without binarization the held-out images are the dataset's own.
    plain = run.run_data(settings, ds, "none")
    np.testing.assert_array_equal(plain.test, ds.test)
    np.testing.assert_array_equal(plain.val, ds.train[held])


def test_a_statically_binarized_run_is_evaluated_on_its_own_draw(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", "torch", "--dataset", "digits", "--hidden", "16", "--latent-dim"]
    argv += ["2", "--binarize", "static", "--epochs", "1", "--quiet", "--out", str(out)]
    status, stdout, err = vae(capsys, *argv)
    assert status == 0, err
    printed = printed_test_figures(stdout)["checkpoint"]
    status, got, err = vae(capsys, "eval", "--checkpoint", str(out), "--json")
    assert status == 0, err
    assert json.loads(got)["binarize"] == "static"
    assert abs(json.loads(got)["neg_elbo"] - printed) <= 1e-6


def test_eval_defaults_to_the_checkpoints_28x28_dataset(dynamic_run, capsys):
    # The issue: `vae eval` defaulted to digits (8x8) and failed on a 28x28 checkpoint.
    status, out, err = vae(
        capsys, "eval", "--checkpoint", str(dynamic_run / "checkpoint.safetensors")
    )
    assert status == 0, err
    assert "on 64 test images of mnist:" in out


def test_eval_prints_and_reports_the_iwae_k(dynamic_run, capsys):
    status, out, err = vae(capsys, "eval", "--checkpoint", str(dynamic_run), "--iwae-k", "7")
    assert status == 0, err
    assert "-log p(x) IWAE" in out and "(K=7 importance samples)" in out
    status, out, err = vae(
        capsys, "eval", "--checkpoint", str(dynamic_run), "--iwae-k", "7", "--json"
    )
    assert json.loads(out)["iwae_k"] == 7


def test_a_checkpoint_without_a_dataset_record_needs_dataset(tmp_path, capsys):
    from vae_common.checkpoint import save_checkpoint

    path = tmp_path / "bare.safetensors"
    save_checkpoint(path, init_canonical(CONFIG, 0), CONFIG)
    status, out, err = vae(capsys, "eval", "--checkpoint", str(path), "--backend", "torch")
    assert status == cli.EXIT_BAD_INPUT and "records no dataset: give --dataset" in err


# -- the validation split, the best checkpoint, early stopping --------------------------------


def test_validation_metrics_best_checkpoint_and_the_records(dynamic_run):
    metrics = read_metrics(dynamic_run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"val_neg_elbo", "val_reconstruction", "val_kl"} <= set(m)
        assert not [k for k in m if k.startswith("test_")]  # no peeking at the test set
        assert m["val_neg_elbo"] == pytest.approx(m["val_reconstruction"] + m["val_kl"])
        # 250 training examples in batches of 64: 3 full batches and one of 58.
        assert len(m["train_losses"]) == 4 and m["step"] == 4 * m["epoch"]
    best = run.best_epoch(metrics)
    _, _, meta = load_checkpoint(dynamic_run / BEST)
    assert meta["epoch"] == str(best)
    assert float(meta["val_neg_elbo"]) == metrics[best - 1]["val_neg_elbo"]
    # Recorded: the train state's settings and run.json.
    _, state_meta = load_tensors(dynamic_run / "train_state.safetensors")
    assert json.loads(state_meta["settings"])["val_split"] == 50
    body = json.loads((dynamic_run / "run.json").read_text())
    assert body["settings"]["run"]["val_split"] == 50
    assert body["settings"]["flags"]["val_split"] == 50
    assert body["files"][BEST]["epoch"] == best
    assert body["test"]["best"]["epoch"] == best and body["test"]["last"]["epoch"] == 2


class FakeValidation:
    """``Trainer.evaluate`` with the validation -ELBO of epoch e replaced by ``values[e - 1]``
    (the validation set is the one of ``size`` images); every other evaluation is real."""

    def __init__(self, monkeypatch, size: int, values: list[float]) -> None:
        import vae_torch.train
        from vae_common.trainer import TrainerBase

        self.calls = 0
        original = TrainerBase.evaluate  # the torch Trainer's own, never patched

        def evaluate(trainer, x, *args, **kwargs):
            result = original(trainer, x, *args, **kwargs)
            if len(x) == size:
                result = {**result, "neg_elbo": values[self.calls]}
                self.calls += 1
            return result

        monkeypatch.setattr(vae_torch.train.Trainer, "evaluate", evaluate)


def test_best_checkpoint_holds_the_best_epochs_weights_and_early_stopping(tmp_path, monkeypatch):
    settings = run_state.RunSettings("digits-small", batch_size=32, val_split=40)
    # Validation -ELBO 10 at epoch 1, then worse: the best is epoch 1, and with patience 2 the
    # run stops after epoch 3 of 6.
    FakeValidation(monkeypatch, 40, [10.0, 30.0, 20.0, 5.0, 5.0, 5.0])
    out = tmp_path / "run"
    metrics = train_run(out, DIGITS, 6, settings=settings, patience=2)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["val_neg_elbo"] for m in metrics] == [10.0, 30.0, 20.0]
    results = run.test_results(out)
    assert results["stopped_early"] is True and results["best"]["epoch"] == 1
    # best.safetensors holds epoch 1's weights: those of a one-epoch run, bit for bit.
    one = tmp_path / "one"
    FakeValidation(monkeypatch, 40, [10.0])
    train_run(one, DIGITS, 1, settings=settings)
    best, _, meta = load_checkpoint(out / BEST)
    first, _, _ = load_checkpoint(one / "checkpoint.safetensors")
    assert meta["epoch"] == "1"
    assert all(np.array_equal(best[n], first[n]) for n in first)
    # A resume counts on: still no improvement for 2 epochs, so no epoch is trained.
    FakeValidation(monkeypatch, 40, [])
    again = train_run(out, DIGITS, 6, settings=settings, patience=2, resume=True)
    assert [m["epoch"] for m in again] == [1, 2, 3]
    # A larger patience lets it go on, counting from the best epoch (1): epochs 4 and 5.
    FakeValidation(monkeypatch, 40, [40.0, 50.0, 1.0])
    longer = train_run(out, DIGITS, 6, settings=settings, patience=4, resume=True)
    assert [m["epoch"] for m in longer] == [1, 2, 3, 4, 5]
    assert run.test_results(out)["best"]["epoch"] == 1


def test_patience_needs_a_validation_split(tmp_path, capsys):
    argv = ["train", "--backend", "torch", "--dataset", "digits", "--patience", "3"]
    status, out, err = vae(capsys, *argv, "--quiet", "--out", str(tmp_path / "run"))
    assert status == cli.EXIT_BAD_INPUT and "give --val-split N too" in err


def test_a_validation_split_that_leaves_no_batch_is_refused(tmp_path, capsys):
    argv = ["train", "--backend", "torch", "--dataset", "digits", "--val-split", "1450"]
    status, out, err = vae(capsys, *argv, "--quiet", "--out", str(tmp_path / "run"))
    assert status == cli.EXIT_BAD_INPUT
    assert "--val-split 1450 leaves 50 of the 1500 training examples" in err


def test_test_every_epoch_is_asked_for(tmp_path):
    metrics = train_run(tmp_path / "run", DIGITS, 2, test_every_epoch=True)
    assert all({"test_neg_elbo", "test_reconstruction", "test_kl"} <= set(m) for m in metrics)
    # The last epoch's per-epoch figure is the end's figure.
    assert run.test_results(tmp_path / "run")["last"]["neg_elbo"] == metrics[-1]["test_neg_elbo"]


# -- the last partial batch --------------------------------------------------------------------


def test_every_example_is_used_once_per_epoch():
    full = batch_indices(103, 10, seed=1, epoch=4)
    last = last_batch_indices(103, 10, seed=1, epoch=4)
    assert full.shape == (10, 10) and last.shape == (3,)
    assert sorted(np.concatenate([full.ravel(), last])) == list(range(103))
    assert last_batch_indices(100, 10, seed=1, epoch=4).shape == (0,)
    np.testing.assert_array_equal(last_batch_indices(7, 3, 0, 5, shuffle=False), [6])


@pytest.mark.parametrize("drop_last", [False, True])
def test_the_last_batch_is_a_step_unless_dropped(drop_last, tmp_path):
    # 256 images in batches of 48: 5 full batches and one of 16.
    settings = run_state.RunSettings("digits-small", batch_size=48, drop_last=drop_last)
    metrics = train_run(tmp_path / "run", DIGITS, 2, settings=settings)
    steps = 5 if drop_last else 6
    assert [len(m["train_losses"]) for m in metrics] == [steps, steps]
    assert [m["step"] for m in metrics] == [steps, 2 * steps]
    if not drop_last:
        losses = np.asarray(metrics[0]["train_losses"])
        # train_loss is the mean over the epoch's examples: the last batch weighs 16 of 256.
        want = (48 * losses[:5].sum() + 16 * losses[5]) / 256
        assert metrics[0]["train_loss"] == pytest.approx(want, rel=1e-12)


def test_the_last_batch_step_is_the_same_in_both_backends_float64():
    config = CONFIG
    x = DIGITS.train[:100]
    index = last_batch_indices(100, 32, seed=5, epoch=2)  # 4 examples
    state = init_canonical(config, 1, "float64")
    results = {}
    for backend in ("torch", "jax"):
        trainer = run.make_trainer(backend, config, TrainConfig(lr=1e-2, warmup_steps=4), "float64")
        trainer.load_state_dict(state)
        # The step after three others: the KL warm-up weight of step 3 applies.
        loss = run.train_last_batch(trainer, x, index, seed=5, epoch=2, dynamic=True)
        results[backend] = (loss, trainer.state_dict(), trainer.step)
        # The documented draws, spelled out, through the reproducible path: the same step.
        again = run.make_trainer(backend, config, TrainConfig(lr=1e-2, warmup_steps=4), "float64")
        again.load_state_dict(state)
        xb = binarize(x[index], np.random.default_rng([5, 2, 2])).astype(np.float64)
        eps = np.random.default_rng([5, 2, 1]).standard_normal((4, config.latent_dim))
        assert again.run_steps(xb[None], eps[None])[0] == loss
    (l_jax, w_jax, s_jax), (l_torch, w_torch, s_torch) = results["jax"], results["torch"]
    assert s_jax == s_torch == 1
    assert rel_diff(l_jax, l_torch) <= 1e-12
    assert max(rel_diff(w_jax[n], w_torch[n]) for n in w_jax) <= 1e-12


# -- a CLI that remembers -------------------------------------------------------------------


def cli_train(out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "digits", "--quiet", "--device", "cpu", "--out", str(out), *extra]


def test_resume_takes_every_setting_from_the_run(tmp_path, capsys):
    settings = ["--backend", "torch", "--hidden", "24", "--latent-dim", "3", "--batch-size", "100"]
    settings += ["--lr", "0.002", "--beta", "0.5", "--val-split", "300", "--binarize", "dynamic"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert vae(capsys, *cli_train(full, *settings, "--epochs", "3"))[0] == 0
    assert vae(capsys, *cli_train(resumed, *settings, "--epochs", "3"))[0] == 0
    # Interrupt after one epoch by hand: a fresh run of 1 epoch, then a bare --resume to 3.
    short = tmp_path / "short"
    assert vae(capsys, *cli_train(short, *settings, "--epochs", "1"))[0] == 0
    status, out, err = vae(
        capsys, "train", "--out", str(short), "--resume", "--epochs", "3", "--quiet"
    )
    assert status == 0, err
    assert_same_run(short, full)
    # A bare --resume of a finished run trains nothing and keeps its figures.
    status, again, err = vae(capsys, "train", "--out", str(full), "--resume", "--quiet")
    assert status == 0, err
    assert len(read_metrics(full)) == 3


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--lr", "0.01", "--lr 0.01 (the run has 0.001)"),
        ("--val-split", "10", "--val-split 10 (the run has 0)"),
        ("--binarize", "dynamic", "--binarize dynamic (the run has none)"),
        ("--hidden", "8", "--hidden 8 (the run has 16)"),
        ("--dataset", "npz:x.npz", "--dataset npz:x.npz (the run has digits)"),
    ],
)
def test_resume_refuses_a_differing_model_or_training_flag_naming_it(
    flag, value, message, finished_cli_run, capsys
):
    before = {p.name: p.read_bytes() for p in finished_cli_run.iterdir()}
    status, out, err = vae(capsys, "train", "--out", str(finished_cli_run), "--resume", flag, value)
    assert status == cli.EXIT_BAD_INPUT and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "--resume refused" in err
    assert {p.name: p.read_bytes() for p in finished_cli_run.iterdir()} == before


@pytest.fixture(scope="module")
def finished_cli_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = cli_train(out, "--backend", "torch", "--hidden", "16", "--latent-dim", "2")
    assert cli.main([*argv, "--epochs", "1"]) == 0
    return out


def test_resume_may_change_the_epochs_and_the_backend(finished_cli_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_cli_run, out)
    status, _, err = vae(
        capsys,
        "train",
        "--out",
        str(out),
        "--resume",
        "--epochs",
        "2",
        "--backend",
        "jax",
        "--quiet",
    )
    assert status == 0, err
    assert [m["backend"] for m in read_metrics(out)] == ["torch", "jax"]
    train, held_out, _ = run.loss_curve_series(read_metrics(out))
    # The loss curve says which backend trained which epochs, at their global steps.
    assert list(train) == ["torch, epoch 1", "jax, epoch 2"]
    assert train["torch, epoch 1"][0] == list(range(1, 13))
    assert train["jax, epoch 2"][0] == list(range(13, 25))


def test_config_file_stands_in_for_flags_and_flags_override_it(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'backend = "torch"\ndataset = "digits"\nhidden = [16]\nlatent-dim = 2\nbatch_size = 100\n'
        "epochs = 1\nlr = 0.002\nquiet = true\n"
    )
    out = tmp_path / "run"
    status, _, err = vae(capsys, "train", "--config", str(toml), "--out", str(out), "--lr", "0.003")
    assert status == 0, err
    flags = json.loads((out / "run.json").read_text())["settings"]["flags"]
    assert (flags["lr"], flags["batch_size"], flags["hidden"]) == (0.003, 100, [16])
    _, state_meta = load_tensors(out / "train_state.safetensors")
    assert json.loads(state_meta["train"])["lr"] == 0.003
    # The effective settings of a run are a config for the next one (run.json as --config).
    again = tmp_path / "again"
    status, _, err = vae(
        capsys, "train", "--config", str(out / "run.json"), "--out", str(again), "--quiet"
    )
    assert status == 0, err
    assert_same_run(again, out)
    # JSON works too; an unknown key or a bad value names the file and the option.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backend": "torch", "learning_rate": 1}))
    status, _, err = vae(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "x"))
    assert status == cli.EXIT_BAD_INPUT and "unknown option 'learning_rate'" in err
    bad.write_text(json.dumps({"backend": "torch", "lr": -1}))
    status, _, err = vae(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "x"))
    assert status == cli.EXIT_BAD_INPUT and f"--config {bad}: lr" in err and "> 0" in err


def test_help_shows_every_default_and_version(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "eval"):
        p = sub.choices[name]
        for action in p._actions:
            if action.dest in options.UNSET:
                continue  # --layout: its default "auto" stands for "not given"
            if action.dest in options.TRAIN_DEFAULTS or action.dest in options.EVAL_DEFAULTS:
                is_flag = action.nargs == 0
                assert action.default is None, (name, action.dest)  # given vs not given
                if not is_flag and action.dest not in ("out", "checkpoint", "backend", "init"):
                    assert "default:" in (action.help or ""), (name, action.option_strings)
        assert "default: None" not in p.format_help()
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert re.fullmatch(r"vae \S+\n", capsys.readouterr().out)


# -- logging ---------------------------------------------------------------------------------


def test_progress_is_one_plain_line_per_epoch_off_a_terminal(tmp_path, capsys):
    argv = ["train", "--backend", "torch", "--dataset", "digits", "--hidden", "16", "--epochs", "2"]
    status, out, err = vae(capsys, *argv, "--device", "cpu", "--out", str(tmp_path / "run"))
    assert status == 0
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["torch epoch 1/2", "torch epoch 2/2"]
    assert "train loss" in lines[0] and "step 12" in lines[0]


def test_metrics_jsonl_is_appended_not_rewritten(tmp_path):
    out = tmp_path / "run"
    train_run(out, DIGITS, 1)
    inode = os.stat(out / "metrics.jsonl").st_ino
    first = (out / "metrics.jsonl").read_bytes()
    train_run(out, DIGITS, 3, resume=True)
    assert os.stat(out / "metrics.jsonl").st_ino == inode
    assert (out / "metrics.jsonl").read_bytes().startswith(first)
    assert len(read_metrics(out)) == 3


def read_events(directory: Path) -> list:
    """Every event of the TensorBoard files in ``directory`` (TFRecord framing, read here)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            events.append(event)
            i += 12 + length + 4
    return events


def scalars(events) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_tensorboard_scalars_at_their_global_steps(tmp_path):
    pytest.importorskip("tensorboardX")
    out, tb = tmp_path / "run", tmp_path / "tb"
    settings = run_state.RunSettings("digits-small", batch_size=48, val_split=40)
    metrics = train_run(out, DIGITS, 2, settings=settings, tensorboard=tb, log_every=2)
    got = scalars(read_events(tb))
    # 216 examples in batches of 48: 5 steps an epoch (the last of 24); every 2nd step logged.
    losses = [v for m in metrics for v in m["train_losses"]]
    assert [s for s, _ in got["train/loss"]] == [2, 4, 6, 8, 10]
    assert [v for _, v in got["train/loss"]] == pytest.approx(
        [losses[i - 1] for i in (2, 4, 6, 8, 10)]
    )
    assert got["val/neg_elbo"] == [
        (5, pytest.approx(metrics[0]["val_neg_elbo"])),
        (10, pytest.approx(metrics[1]["val_neg_elbo"])),
    ]
    assert [s for s, _ in got["epoch/train_loss"]] == [5, 10]
    assert "test/neg_elbo" not in got
    assert got["final/test_neg_elbo"][0][0] == 10 and "final/best_test_neg_elbo" in got
    # A resume purges what a killed process logged past its committed step.
    train_run(out, DIGITS, 3, settings=settings, tensorboard=tb, log_every=2, resume=True)
    starts = [e.step for e in read_events(tb) if e.HasField("session_log")]
    assert starts == [0, 11]


def test_tensorboard_without_its_package_is_one_line_naming_the_extra(
    tmp_path, capsys, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    argv = ["train", "--backend", "torch", "--dataset", "digits", "--tensorboard", "--quiet"]
    status, out, err = vae(capsys, *argv, "--out", str(tmp_path / "run"))
    assert status == cli.EXIT_BAD_INPUT
    assert err.strip() == (
        "vae train: error: --tensorboard needs the tensorboardX package: pip install "
        "'vae-twin[tensorboard]'"
    )
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "run.json").exists()


def test_the_default_tensorboard_directory_is_in_the_run(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    argv = ["train", "--backend", "torch", "--dataset", "digits", "--hidden", "16", "--epochs", "1"]
    status, _, err = vae(capsys, *argv, "--tensorboard", "--quiet", "--out", str(out))
    assert status == 0, err
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # Recorded as given (no DIR): a run started from these flags logs into its own OUT/tb.
    recorded = json.loads((out / "run.json").read_text())["settings"]["flags"]["tensorboard"]
    assert recorded == ""
    other = tmp_path / "other"
    argv = ["train", "--config", str(out / "run.json"), "--out", str(other), "--quiet"]
    status, _, err = vae(capsys, *argv)
    assert status == 0, err
    assert list((other / "tb").glob("events.out.tfevents.*"))


def test_training_images_are_never_the_binarized_test_images():
    # Guard on RunData: the dynamic protocol keeps the training images grey (drawn per batch).
    ds = Dataset("d", DIGITS.train, DIGITS.test, DIGITS.train_labels, DIGITS.test_labels)
    data = run.run_data(SETTINGS, ds, "dynamic")
    assert not set(np.unique(data.train)) <= {0.0, 1.0}
    assert set(np.unique(data.test)) <= {0.0, 1.0}


@pytest.mark.slow
def test_tensorboard_logging_needs_no_torch(tmp_path):
    # A JAX-only install: torch refused at import, `vae train --backend jax --tensorboard`.
    pytest.importorskip("tensorboardX")
    import subprocess
    import sys

    # An import finder that answers torch as not installed (a None in sys.modules would trip
    # scipy's probe of sys.modules["torch"], which a real torch-less install never shows).
    code = (
        "import importlib.abc, sys\n"
        "class NotInstalled(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from vae_tools import cli\n"
        f"sys.exit(cli.main(['train', '--backend', 'jax', '--dataset', 'digits', '--hidden', '8',"
        f" '--epochs', '1', '--quiet', '--tensorboard', '--out', {str(tmp_path / 'run')!r}]))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "train/loss" in scalars(read_events(tmp_path / "run" / "tb"))
