"""The run directory's protocol (``vae_tools.run_dir``): the manifest as commit point and the
repairs of ``--resume``, consent before writing into a directory, the lock, non-finite results,
failed writes and damaged metrics.

Runs use a small slice of the bundled digits passed as ``dataset=`` (torch on the CPU, one
thread); the CLI cases run ``vae train`` in this process on the bundled digits.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_helpers import (
    CONFIG,
    assert_manifest_holds,
    assert_same_run,
    file_bytes,
    file_epoch,
    manifest,
    read_metrics,
    train_run,
)
from run_helpers import small_digits as load_small_digits

import vae_common.files
from vae_common.checkpoint import load_checkpoint, load_tensors, save_checkpoint
from vae_common.config import VAEConfig
from vae_common.data import Dataset
from vae_common.errors import CheckpointError, ResumeError, RunDirError, TrainingError, UsageError
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_tools import cli, run_commit, run_dir, run_metrics

EPOCH_FILES = ("metrics.jsonl", "train_state.safetensors", "checkpoint.safetensors")
CLI_TRAIN = [
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
    "2",
    "--device",
    "cpu",
    "--quiet",
]


DIGITS = load_small_digits()
# A Gaussian decoder with this learning rate diverges in the first epoch.
BAD_LR = TrainConfig(lr=1e8)


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    return DIGITS


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, small_digits) -> dict[int, Path]:
    """Uninterrupted runs of 1, 2 and 3 epochs (read-only: tests copy what they change)."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for epochs in (1, 2, 3):
        runs[epochs] = root / f"epochs-{epochs}"
        train_run(runs[epochs], small_digits, epochs)
    return runs


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def vae(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error_line(err: str, *phrases: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def no_training(monkeypatch) -> None:
    """Make any attempt to load data or train fail the test: refusals come before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run went on to load data after it should have refused")

    monkeypatch.setattr("vae_common.data.load_dataset", refuse)
    monkeypatch.setattr("vae_tools.run_setup.prepare_data", refuse)


# The manifest as commit point, and what --resume repairs.


def test_every_epoch_is_committed_by_the_manifest(tmp_path, small_digits):
    out = tmp_path / "run"
    train_run(out, small_digits, 1)
    assert_manifest_holds(out, 1)
    assert manifest(out)["format"] == "vae-twin-run/1"
    train_run(out, small_digits, 2, resume=True)
    assert_manifest_holds(out, 2)
    assert manifest(out)["step"] == int(load_tensors(out / "train_state.safetensors")[1]["step"])


def test_a_kill_between_the_last_train_state_and_its_checkpoint_is_repaired(
    tmp_path, reference_runs
):
    # The kill of the issue: epoch 2's metrics and train state are written, its checkpoint and
    # manifest are not. Before the manifest, --resume saw a finished run and kept the epoch-1
    # checkpoint for good.
    out = copy_run(reference_runs[2], tmp_path / "killed")
    for name in ("checkpoint.safetensors", "run.json"):
        shutil.copy(reference_runs[1] / name, out / name)
    assert file_epoch(out / "checkpoint.safetensors") == 1
    metrics = train_run(out, DIGITS, 2, resume=True)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert_manifest_holds(out, 2)
    assert_same_run(out, reference_runs[2])


@pytest.mark.parametrize("leading", ["metrics", "metrics and train state"])
def test_files_ahead_of_the_manifest_are_rolled_forward_or_truncated(
    leading, tmp_path, reference_runs
):
    # Killed part-way through epoch 3's writes: the epoch-2 manifest is the last commit.
    out = copy_run(reference_runs[3], tmp_path / "killed")
    behind = ["run.json", "checkpoint.safetensors"]
    if leading == "metrics":
        behind.append("train_state.safetensors")
    for name in behind:
        shutil.copy(reference_runs[2] / name, out / name)
    epoch = 3 if "train state" in leading else 2
    train_run(out, DIGITS, epoch, resume=True)
    assert_manifest_holds(out, epoch)
    assert_same_run(out, reference_runs[epoch])
    train_run(out, DIGITS, 3, resume=True)
    assert_same_run(out, reference_runs[3])


def test_a_checkpoint_that_is_not_the_committed_one_is_rewritten(tmp_path, reference_runs):
    out = copy_run(reference_runs[2], tmp_path / "run")
    shutil.copy(reference_runs[1] / "checkpoint.safetensors", out / "checkpoint.safetensors")
    train_run(out, DIGITS, 2, resume=True)
    assert_manifest_holds(out, 2)
    assert_same_run(out, reference_runs[2])


def test_a_train_state_that_disagrees_with_the_manifest_is_refused(tmp_path, reference_runs):
    out = copy_run(reference_runs[3], tmp_path / "run")
    shutil.copy(reference_runs[1] / "train_state.safetensors", out / "train_state.safetensors")
    before = file_bytes(out)
    with pytest.raises(CheckpointError, match=r"at epoch 1 but .*run.json records epoch 3"):
        train_run(out, DIGITS, 4, resume=True)
    assert file_bytes(out) == before


def test_a_manifest_without_its_train_state_is_refused(tmp_path, reference_runs):
    out = copy_run(reference_runs[2], tmp_path / "run")
    (out / "train_state.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"train_state.safetensors is missing but"):
        train_run(out, DIGITS, 3, resume=True)


def test_a_damaged_manifest_beside_a_train_state_is_refused(tmp_path, reference_runs):
    out = copy_run(reference_runs[1], tmp_path / "run")
    (out / "run.json").write_text('{"format": "vae-twin-run/1", "epoch": "one"}')
    with pytest.raises(CheckpointError, match=r"run.json is a damaged run manifest"):
        train_run(out, DIGITS, 2, resume=True)


def test_resume_of_a_run_that_never_committed_an_epoch_starts_over(tmp_path, reference_runs):
    # Killed after epoch 1's metrics were written, before its train state.
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(run_dir.Manifest().to_json())
    shutil.copy(reference_runs[2] / "metrics.jsonl", out / "metrics.jsonl")
    train_run(out, DIGITS, 1, resume=True)
    assert_manifest_holds(out, 1)
    assert_same_run(out, reference_runs[1])


# Consent: --out that holds someone else's files, or a run, or cannot be a run directory.


@pytest.fixture
def foreign_dir(tmp_path) -> Path:
    """A directory holding a checkpoint and a PNG of someone else, and no train state."""
    out = tmp_path / "theirs"
    out.mkdir()
    config = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    save_checkpoint(out / "checkpoint.safetensors", init_canonical(config, 7, "float32"), config)
    (out / "samples.png").write_bytes(b"\x89PNG not ours")
    (out / "notes.txt").write_text("mine\n")
    return out


def test_a_directory_of_someone_elses_files_is_refused_naming_them(
    foreign_dir, small_digits, monkeypatch
):
    before = file_bytes(foreign_dir)
    no_training(monkeypatch)
    with pytest.raises(RunDirError) as info:
        train_run(foreign_dir, small_digits, 1)
    message = str(info.value)
    for name in ("checkpoint.safetensors", "notes.txt", "samples.png", "--overwrite"):
        assert name in message
    assert file_bytes(foreign_dir) == before


def test_the_cli_refuses_someone_elses_files_with_exit_2(foreign_dir, capsys, monkeypatch):
    before = file_bytes(foreign_dir)
    no_training(monkeypatch)
    status, out, err = vae(capsys, *CLI_TRAIN, "--out", str(foreign_dir))
    assert status == cli.EXIT_BAD_INPUT and out == ""
    assert_one_error_line(err, "vae train: error: ", "checkpoint.safetensors", "--overwrite")
    assert file_bytes(foreign_dir) == before
    # --resume is no licence either: there is no run to resume.
    status, _, err = vae(capsys, *CLI_TRAIN, "--out", str(foreign_dir), "--resume")
    assert status == cli.EXIT_BAD_INPUT and "notes.txt" in err
    assert file_bytes(foreign_dir) == before


def test_overwrite_replaces_the_run_files_and_leaves_the_others(
    foreign_dir, tmp_path, reference_runs, capsys
):
    theirs = (foreign_dir / "checkpoint.safetensors").read_bytes()
    status, _, err = vae(capsys, *CLI_TRAIN, "--out", str(foreign_dir), "--overwrite")
    assert status == 0, err
    assert (foreign_dir / "notes.txt").read_text() == "mine\n"
    assert (foreign_dir / "checkpoint.safetensors").read_bytes() != theirs
    assert (foreign_dir / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_manifest_holds(foreign_dir, 1)


def test_overwrite_starts_an_existing_run_over(tmp_path, reference_runs):
    out = copy_run(reference_runs[3], tmp_path / "run")
    metrics = train_run(out, DIGITS, 1, overwrite=True)
    assert [m["epoch"] for m in metrics] == [1]
    assert_manifest_holds(out, 1)
    assert_same_run(out, reference_runs[1])


def test_a_directory_holding_only_what_a_killed_run_leaves_is_empty(tmp_path, reference_runs):
    out = tmp_path / "run"
    out.mkdir()
    for name in (".vae-train.lock", ".run.json.abc123.tmp", "samples.png.tmp.png", ".vae-probe.x"):
        (out / name).write_bytes(b"partial")
    train_run(out, DIGITS, 1)
    assert_same_run(out, reference_runs[1])


def test_a_run_that_never_committed_an_epoch_can_be_started_again(tmp_path, reference_runs):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(run_dir.Manifest().to_json())
    train_run(out, DIGITS, 1)
    assert_same_run(out, reference_runs[1])


def test_resume_and_overwrite_together_are_refused(tmp_path, small_digits):
    with pytest.raises(UsageError, match="not both"):
        train_run(tmp_path / "run", small_digits, 1, resume=True, overwrite=True)


def test_a_finished_run_is_not_overwritten_without_consent(reference_runs, small_digits):
    before = file_bytes(reference_runs[1])
    with pytest.raises(ResumeError, match="--resume to continue it, --overwrite to start over"):
        train_run(reference_runs[1], small_digits, 1)
    assert file_bytes(reference_runs[1]) == before


def read_only(monkeypatch, code: int) -> None:
    """Creating a file anywhere fails with ``code`` (a read-only file system, say)."""

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("tempfile.mkstemp", fail)


OUT_CASES = {
    "a file": (lambda root: root / "afile", "is a file, not a directory"),
    "under a file": (lambda root: root / "afile" / "run", "a parent of it is a file"),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_out_that_cannot_be_a_directory_exits_2_before_any_work(
    case, tmp_path, capsys, monkeypatch
):
    (tmp_path / "afile").write_text("x")
    where, phrase = OUT_CASES[case]
    no_training(monkeypatch)
    status, out, err = vae(capsys, *CLI_TRAIN, "--out", str(where(tmp_path)))
    assert status == cli.EXIT_BAD_INPUT and out == ""
    assert_one_error_line(err, "vae train: error: --out ", phrase)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_out_that_is_not_writable_exits_2_before_any_work(code, tmp_path, capsys, monkeypatch):
    no_training(monkeypatch)
    read_only(monkeypatch, code)
    status, out, err = vae(capsys, *CLI_TRAIN, "--out", str(tmp_path / "run"))
    assert status == cli.EXIT_BAD_INPUT and out == ""
    assert_one_error_line(err, "is not writable", os.strerror(code))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_directory_exits_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    no_training(monkeypatch)
    try:
        status, _, err = vae(capsys, *CLI_TRAIN, "--out", str(out))
    finally:
        out.chmod(0o755)
    assert status == cli.EXIT_BAD_INPUT
    assert_one_error_line(err, "is not writable", "Permission denied")


# The lock.


HOLD_LOCK = """
import sys, time
from vae_tools.run_dir import RunDir
with RunDir.open(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_a_locked_directory_fails_naming_the_holder(
    tmp_path, capsys, reference_runs
):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        for extra in ([], ["--resume"], ["--overwrite"]):
            status, _, err = vae(capsys, *CLI_TRAIN, "--out", str(out), *extra)
            assert status == cli.EXIT_BAD_INPUT
            assert_one_error_line(err, "in use by another vae train", f"pid {holder.pid}")
        assert {p.name for p in out.iterdir()} == {".vae-train.lock"}
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock of a process that dies
        holder.wait()
    status, _, err = vae(capsys, *CLI_TRAIN, "--out", str(out))
    assert status == 0, err


def test_the_lock_is_released_on_every_exit_path(tmp_path, small_digits, monkeypatch):
    out = tmp_path / "run"
    with run_dir.RunDir.open(out):
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            train_run(out, small_digits, 1)
    train_run(out, small_digits, 1)
    with pytest.raises(ResumeError):
        train_run(out, small_digits, 2, resume=True, config=CONFIG.replace(latent_dim=3))
    gaussian = CONFIG.replace(likelihood="gaussian")
    with pytest.raises(TrainingError):
        train_run(out, small_digits, 1, config=gaussian, train=BAD_LR, overwrite=True)

    def bug(*args):
        raise KeyError("a bug")

    monkeypatch.setattr("vae_tools.run_setup.prepare_data", bug)
    with pytest.raises(KeyError):
        train_run(out, small_digits, 1)
    assert (out / ".vae-train.lock").read_text() == "", "a released lock names no pid"
    with run_dir.RunDir.open(out):  # raises if any of those runs still held the lock
        pass


# Non-finite results are errors, and nothing non-finite is saved.


def test_a_nan_test_metric_exits_1_and_saves_nothing(tmp_path, capsys):
    # lr 10, one step per epoch: the step's own loss is finite, the test -ELBO after it is not.
    out = tmp_path / "run"
    for split, flags in (("test", ["--test-every-epoch"]), ("val", ["--val-split", "100"])):
        out = tmp_path / split
        argv = [*CLI_TRAIN[:7], "--quiet", "--lr", "10", "--batch-size", "1400", "--out", str(out)]
        status, stdout, err = vae(capsys, *argv, "--drop-last", *flags)
        assert status == cli.EXIT_FAILED and stdout == ""
        line = assert_one_error_line(err, "at epoch 1", "No checkpoint was written")
        assert f"{split}_neg_elbo became nan" in line or "non-finite" in line, line
        assert not {"checkpoint.safetensors", "train_state.safetensors", "metrics.jsonl"} & {
            p.name for p in out.iterdir()
        }


@pytest.mark.parametrize(
    ("what", "method", "name"),
    [
        ("weight", "state_dict", "decoder.out.bias"),
        ("Adam moment", "optimizer_state_dict", "adam.exp_avg_sq.encoder.hidden.0.weight"),
    ],
)
def test_a_non_finite_tensor_after_an_epoch_is_named_and_not_saved(
    what, method, name, tmp_path, reference_runs, monkeypatch
):
    import vae_torch.train

    out = copy_run(reference_runs[2], tmp_path / "run")
    before = file_bytes(out)
    original = getattr(vae_torch.train.Trainer, method)

    def inf_after_epoch_2(self):
        tensors = original(self)
        if self.step > 2 * 8:
            tensors[name] = np.full_like(tensors[name], np.inf)
        return tensors

    monkeypatch.setattr(vae_torch.train.Trainer, method, inf_after_epoch_2)
    with pytest.raises(TrainingError) as info:
        train_run(out, DIGITS, 3, resume=True)
    assert f"{what} {name!r} holds" in str(info.value) and "after epoch 3" in str(info.value)
    assert "(epoch 2) is kept" in str(info.value)
    assert file_bytes(out) == before


def test_metrics_are_strict_json():
    with pytest.raises(ValueError, match="JSON"):
        run_metrics.metrics_bytes([{"epoch": 1, "test_neg_elbo": float("nan")}])


def test_eval_of_a_checkpoint_that_overflows_exits_1_and_prints_no_number(tmp_path, capsys):
    config = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    state = init_canonical(config, 0, "float32")
    state = {k: v * np.float32(1e30) if k.startswith("encoder") else v for k, v in state.items()}
    path = tmp_path / "huge.safetensors"
    save_checkpoint(path, state, config)
    for backend in ("torch", "jax"):
        argv = ["eval", "--checkpoint", str(path), "--backend", backend, "--dataset", "digits"]
        status, out, err = vae(capsys, *argv)
        assert status == cli.EXIT_FAILED and out == ""
        assert_one_error_line(err, "gave neg_elbo = nan", "not a result to report")
        status, out, err = vae(capsys, *argv, "--json")
        assert status == cli.EXIT_FAILED and out == ""


# Failed writes: one clear error naming the file, the committed files intact.


def fail_writes_of(monkeypatch, target: str, code: int) -> list[str]:
    """Every write of the run file ``target`` fails with ``code``; returns the names of the
    attempts (so a test can tell the failure was reached)."""
    attempts = []
    real = vae_common.files.atomic_write_bytes

    def writer(path, data):
        if Path(path).name == target:
            attempts.append(target)
            raise OSError(code, os.strerror(code), str(path))
        real(path, data)

    for module in (vae_common.files, run_metrics, run_dir):
        monkeypatch.setattr(module, "atomic_write_bytes", writer)
    if target == "metrics.jsonl":
        # Appended, not replaced: a full disk leaves a partial line after the committed ones.
        def failing_append(path, record):
            attempts.append(target)
            with open(path, "ab") as f:
                f.write(run_metrics.metrics_bytes([record])[:20])
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(run_commit, "append_metrics", failing_append)
    if target.endswith(".png"):
        import matplotlib.figure

        savefig = matplotlib.figure.Figure.savefig

        def failing_savefig(self, fname, *args, **kwargs):
            if str(fname).startswith(str(Path(fname).parent / target)):
                attempts.append(target)
                raise OSError(code, os.strerror(code), str(fname))
            return savefig(self, fname, *args, **kwargs)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", failing_savefig)
    return attempts


@pytest.mark.parametrize("target", [*EPOCH_FILES, "run.json", "loss_curves.png"])
def test_a_full_disk_names_the_file_and_keeps_the_committed_epoch(
    target, tmp_path, reference_runs, monkeypatch
):
    out = copy_run(reference_runs[1], tmp_path / "run")
    committed = {n: (out / n).read_bytes() for n in ("run.json", *EPOCH_FILES)}
    attempts = fail_writes_of(monkeypatch, target, errno.ENOSPC)
    with pytest.raises(RunDirError) as info:
        train_run(out, DIGITS, 2, resume=True, plots=True)
    assert attempts, "the failing write was never reached"
    message = str(info.value)
    assert f"cannot write {out / target}" in message and "No space left on device" in message
    if target != "loss_curves.png":
        assert "the files of epoch 1 are intact" in message
        assert manifest(out)["epoch"] == 1
        assert (out / "run.json").read_bytes() == committed["run.json"]
        # What the manifest vouches for is what it vouched for before.
        for name in EPOCH_FILES[EPOCH_FILES.index(target) + 1 :] if target in EPOCH_FILES else ():
            assert (out / name).read_bytes() == committed[name], name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    train_run(out, DIGITS, 2, resume=True)
    assert_manifest_holds(out, 2)
    assert_same_run(out, reference_runs[2])


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_other_write_errors_exit_2_with_one_line(
    code, tmp_path, reference_runs, capsys, monkeypatch
):
    out = tmp_path / "run"
    fail_writes_of(monkeypatch, "train_state.safetensors", code)
    status, stdout, err = vae(capsys, *CLI_TRAIN, "--out", str(out))
    assert status == cli.EXIT_BAD_INPUT and stdout == ""
    assert_one_error_line(err, "cannot write", "train_state.safetensors", os.strerror(code))
    assert manifest(out)["epoch"] == 0


# A damaged metrics.jsonl on resume.

DAMAGE = {
    "truncated last line": (lambda lines: lines[:-1] + [lines[-1][:40]], 2, "is not a JSON record"),
    "not JSON": (lambda lines: ["this is not json"] + lines[1:], 1, "is not a JSON record"),
    "not an object": (lambda lines: ["[1, 2]"] + lines[1:], 1, "is not a JSON object"),
    "a missing key": (
        lambda lines: (
            [json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "step"})] + lines[1:]
        ),
        1,
        "lacks ['step']",
    ),
    "NaN": (
        lambda lines: [lines[0].replace('"train_loss": ', '"train_loss": NaN, "x": ')] + lines[1:],
        1,
        "NaN is not a JSON number",
    ),
    "an epoch out of sequence": (lambda lines: [lines[1], lines[0]], 1, "records epoch 2"),
    "a lost record": (lambda lines: lines[:1], None, "holds 1 epoch records"),
}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """A two-epoch run of ``vae train`` (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main([*CLI_TRAIN[:6], "2", *CLI_TRAIN[7:], "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_metrics_on_resume_exit_2_naming_the_file_and_line(case, cli_run, tmp_path, capsys):
    out = copy_run(cli_run, tmp_path / "run")
    argv = [*CLI_TRAIN[:6], "2", *CLI_TRAIN[7:], "--out", str(out)]
    damage, line, phrase = DAMAGE[case]
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(damage(lines)) + "\n")
    before = file_bytes(out)
    status, stdout, err = vae(capsys, *argv[:6], "3", *argv[7:], "--resume")
    assert status == cli.EXIT_BAD_INPUT and stdout == ""
    where = f"{path}, line {line}" if line else str(path)
    assert_one_error_line(err, where, phrase, "cannot resume")
    assert file_bytes(out) == before


def test_a_damaged_line_after_the_committed_epochs_is_dropped(tmp_path, reference_runs):
    out = copy_run(reference_runs[2], tmp_path / "run")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')
    train_run(out, DIGITS, 3, resume=True)
    assert_manifest_holds(out, 3)
    assert_same_run(out, reference_runs[3])
    assert len(read_metrics(out)) == 3
    assert load_checkpoint(out / "checkpoint.safetensors")[2]["epoch"] == "3"
