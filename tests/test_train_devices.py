"""``vae train --devices N``: the run directory of a data-parallel run, written by process 0.

A 2-device JAX run (2 forced host CPU devices) and a 2-process torch run (2 gloo ranks launched
through ``torch.distributed.run``) each write one valid checkpoint, train state and metrics log
whose every tensor is the 1-device run's to the float64 tolerance (tiny model, float64, 2
epochs, every epoch ending in a smaller last batch of an odd size, which the devices compute
whole, each of them). A rank killed with SIGKILL ends the whole run with one message naming it;
the committed epoch stays intact and ``--resume --devices 2`` ends on the 1-device numbers (both
resumes stream their training images from the host: ``--stream``). Processes started with
different settings are refused with one message. Bad configurations are refused before any work
(exit status 2).

The 1-device references run in this process (one torch thread, as each rank has on this host:
the thread count alone changes the CPU products' rounding); the data-parallel runs in
subprocesses: JAX needs its device count before it starts, torch ranks are processes. This file
is also the script the ranks of the settings test run (``python tests/test_train_devices.py``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from idx_files import write_idx_dir  # noqa: E402
from run_helpers import assert_manifest_holds, train_args  # noqa: E402

from vae_common.checkpoint import load_checkpoint, load_tensors  # noqa: E402
from vae_common.compare import TOLERANCES, rel_diff  # noqa: E402
from vae_common.errors import ConfigError  # noqa: E402
from vae_tools import cli, run_launch, run_launch_torch  # noqa: E402
from vae_tools.options import train_options  # noqa: E402
from vae_tools.run_ranks import KILL_RANK_ENV, check_split  # noqa: E402

F64 = TOLERANCES["float64"]
EPOCHS = 2
# 73 training images in batches of 16: 4 full batches and a last batch of 9 every epoch, which
# 2 devices do not divide.
N_TRAIN, BATCH = 73, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_idx_dir(tmp_path_factory.mktemp("idx") / "idx", N_TRAIN, 16, size=4, seed=5)


def train_argv(backend: str, data: Path, out: Path, *extra: str) -> list[str]:
    return train_args(
        backend,
        f"idx:{data}",
        out,
        *extra,
        epochs=EPOCHS,
        batch_size=BATCH,
        hidden=6,
        latent_dim=2,
        dtype="float64",
        lr=0.01,
        seed=3,
        device="cpu",
    )


def child_env(**extra: str) -> dict[str, str]:
    """A subprocess's environment: one thread per process, JAX on the CPU with this suite's
    compilation cache, no forced device count and no test hook unless given."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (KILL_RANK_ENV, run_launch.FORCED_ENV, "XLA_FLAGS", "WORLD_SIZE")
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(ROOT / ".pytest_cache" / "jax-compilation-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        **extra,
    )
    return env


def vae_process(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python -m vae_tools.cli ARGV`` in a fresh process (JAX not started yet)."""
    return subprocess.run(
        [sys.executable, "-m", "vae_tools.cli", *argv],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def vae(capfd, *argv: str) -> tuple[int, str, str]:
    """``vae ARGV`` in this process (a child it starts writes to the same descriptors)."""
    capfd.readouterr()
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capfd.readouterr()
    return status, out, err


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_numbers(got: Path, want: Path, devices: int) -> float:
    """``got`` (an N-device run) holds ``want``'s (a 1-device run's) files up to the float64
    tolerance: every checkpoint tensor and every train-state tensor (weights and Adam's moments)
    by name, the same metadata, epochs, steps and per-step losses. Returns the worst relative
    difference."""
    g, g_config, g_meta = load_checkpoint(got / "checkpoint.safetensors")
    w, w_config, w_meta = load_checkpoint(want / "checkpoint.safetensors")
    assert (g_config, g_meta) == (w_config, w_meta)
    assert sorted(g) == sorted(w)
    worst = {f"checkpoint {n}": rel_diff(g[n], w[n]) for n in w}
    gs, gs_meta = load_tensors(got / "train_state.safetensors")
    ws, ws_meta = load_tensors(want / "train_state.safetensors")
    assert sorted(gs) == sorted(ws) and gs_meta == ws_meta
    worst.update({f"train state {n}": rel_diff(gs[n], ws[n]) for n in ws})
    gm, wm = metrics(got), metrics(want)
    assert [(m["epoch"], m["step"]) for m in gm] == [(m["epoch"], m["step"]) for m in wm]
    for a, b in zip(gm, wm, strict=True):
        assert len(a["train_losses"]) == len(b["train_losses"]) == math.ceil(N_TRAIN / BATCH)
        worst[f"epoch {b['epoch']} losses"] = rel_diff(a["train_losses"], b["train_losses"])
        assert (a["devices"], b["devices"]) == (devices, 1)
    assert max(worst.values()) <= F64, worst
    assert all(np.isfinite(v) for v in worst.values())
    worst_name = max(worst, key=worst.__getitem__)
    print(f"{got.name}: max rel diff {worst[worst_name]:.1e} ({worst_name})")
    return worst[worst_name]


def assert_throughput(records: list[dict]) -> None:
    for m in records:
        assert m["samples_per_s"] > 0 and np.isfinite(m["samples_per_s"])
        assert 0 <= m["data_wait_share"] <= 1
        assert m["samples_per_s"] == pytest.approx(N_TRAIN / m["seconds"], rel=1e-9)


@pytest.fixture(scope="module")
def references(data, tmp_path_factory) -> dict[str, Path]:
    """``{backend: directory}`` of the 1-device run, in this process."""
    root = tmp_path_factory.mktemp("one-device")
    runs = {}
    for backend in ("jax", "torch"):
        runs[backend] = root / backend
        assert cli.main(train_argv(backend, data, runs[backend], "--quiet")) == 0
    return runs


# -- the same numbers -----------------------------------------------------------------------------


@pytest.mark.slow
def test_jax_two_devices_write_the_one_device_run_and_resume(
    data, references, tmp_path, capfd, monkeypatch
):
    # JAX has started in this process with one CPU device: vae train runs itself again with two
    # forced host devices, here for epoch 1 only.
    for key, value in child_env().items():
        if key.startswith("JAX_"):
            monkeypatch.setenv(key, value)
    out = tmp_path / "jax-2"
    status, _, err = vae(capfd, *train_argv("jax", data, out, "--devices", "2", "--epochs", "1"))
    assert status == 0, err
    assert "jax epoch 1/1 on 2 devices" in err and "samples/s" in err and "data wait" in err
    assert_manifest_holds(out, 1)
    # A fresh process sets the device count before JAX starts, and resumes on 2 devices, its
    # training images now streamed from the host (not recorded: a resume may choose).
    argv = train_argv("jax", data, out, "--devices", "2", "--resume", "--quiet", "--stream")
    done = vae_process(argv)
    assert done.returncode == 0, done.stderr
    assert_manifest_holds(out, EPOCHS)
    assert_same_numbers(out, references["jax"], 2)
    assert_throughput(metrics(out))


@pytest.mark.slow
def test_two_jax_processes_write_the_one_device_run_from_process_0_alone(
    data, references, tmp_path
):
    # Two hosts in miniature: two processes of one CPU device each, joined by jax.distributed.
    # Process 1 is given another --out, which it must never create.
    from vae_common.distributed import free_port

    address = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / "process-0", tmp_path / "process-1"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vae_tools.cli",
                *train_argv("jax", data, outs[i], "--quiet", "--devices", "2"),
                "--coordinator",
                address,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for i in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "checkpoint.safetensors" in logs[0] and "test -ELBO" not in logs[1], logs
    assert not outs[1].exists()
    assert_manifest_holds(outs[0], EPOCHS)
    assert_same_numbers(outs[0], references["jax"], 2)


@pytest.mark.slow
def test_torch_rank_killed_stops_the_run_and_resume_gives_the_one_device_run(
    data, references, tmp_path
):
    out = tmp_path / "torch-2"
    argv = train_argv("torch", data, out, "--devices", "2")
    killed = vae_process(argv, **{KILL_RANK_ENV: "1:2"})  # rank 1, as epoch 2 begins
    err = killed.stderr
    assert killed.returncode == 1, err
    assert "rank 1 of 2" in err and "SIGKILL" in err and "Traceback" not in err, err
    assert f"Epoch 1 is committed in {out}" in err and "--resume --devices 2" in err, err
    assert "torch epoch 1/2 on 2 devices" in err and "epoch 2/2" not in err, err
    # Only what process 0 writes, and epoch 1 committed and whole.
    assert {p.name for p in out.iterdir()} == {
        ".vae-train.lock",
        "run.json",
        "metrics.jsonl",
        "train_state.safetensors",
        "checkpoint.safetensors",
    }
    assert_manifest_holds(out, 1)
    resumed = vae_process([*argv, "--resume", "--quiet", "--stream", "--prefetch", "1"])
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint.safetensors" in resumed.stdout  # process 0's summary, once
    assert resumed.stdout.count("test -ELBO") == 1, resumed.stdout
    assert_manifest_holds(out, EPOCHS)
    assert_same_numbers(out, references["torch"], 2)
    assert_throughput(metrics(out))
    assert json.loads((out / "run.json").read_text())["test"]["last"]["neg_elbo"] == (
        pytest.approx(
            json.loads((references["torch"] / "run.json").read_text())["test"]["last"]["neg_elbo"],
            rel=F64,
        )
    )


@pytest.mark.slow
def test_ranks_started_with_different_settings_are_refused_once(data, tmp_path):
    out = tmp_path / "differ"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        __file__,
        str(data),
        str(out),
    ]
    done = subprocess.run(
        cmd, env=child_env(), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("vae train")]
    assert done.returncode != 0
    assert len(lines) == 1, done.stderr
    assert "started with different settings (train)" in lines[0], lines
    # (torchrun itself then reports the failed ranks; no frame of ours is in it.)
    assert f'File "{ROOT / "vae_tools"}' not in done.stderr, done.stderr
    assert not out.exists()


# -- refused before any work ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_batch_the_devices_do_not_divide_is_refused(backend, data, tmp_path, capfd):
    out = tmp_path / "run"
    argv = train_argv(backend, data, out, "--devices", "2", "--batch-size", "15")
    status, _, err = vae(capfd, *argv)
    assert status == 2 and err.count("\n") == 1, err
    assert "--batch-size 15 does not split over 2 devices" in err
    assert not out.exists()


def test_only_the_full_batch_must_split_over_the_devices():
    check_split(16, 2)
    check_split(15, None)  # one device takes any batch
    check_split(15, 1)
    with pytest.raises(ConfigError, match=r"--batch-size 15 does not split over 2 devices"):
        check_split(15, 2)
    # The last batch (here of 9, as in the runs above) is no longer checked: those runs prove
    # it ends on the 1-device numbers.
    assert N_TRAIN % BATCH % 2 == 1


def test_more_devices_than_the_host_has_are_refused(data, tmp_path, capfd, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(run_launch_torch, "usable_cores", lambda: 2)
    argv = train_argv("torch", data, out, "--devices", "3", "--batch-size", "18")
    status, _, err = vae(capfd, *argv)
    assert status == 2 and "--devices 3 on the CPU starts 3 processes" in err, err
    assert "2 usable core(s)" in err and not out.exists()
    # JAX that has (even after forcing them) fewer CPU devices than asked for.
    monkeypatch.setenv(run_launch.FORCED_ENV, "1")
    status, _, err = vae(capfd, *train_argv("jax", data, out, "--devices", "2"))
    assert status == 2 and "--devices 2, but JAX has 1 cpu device(s) here" in err, err
    assert not out.exists()


def test_devices_must_match_torchrun_and_jax_flags_are_not_torchs(
    data, tmp_path, capfd, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.setenv("WORLD_SIZE", "2")
    status, _, err = vae(capfd, *train_argv("torch", data, out, "--devices", "3"))
    assert status == 2 and "one of the 2 that torchrun started" in err, err
    monkeypatch.delenv("WORLD_SIZE")
    argv = train_argv("torch", data, out, "--num-processes", "2")
    status, _, err = vae(capfd, *argv)
    assert status == 2 and "--num-processes is for the jax backend" in err, err
    status, _, err = vae(capfd, *train_argv("jax", data, out, "--coordinator", "nohost"))
    assert status == 2 and "coordinator address must be host:port" in err, err
    assert not out.exists()


# -- the pieces ------------------------------------------------------------------------------------


def test_the_command_line_of_the_effective_options_gives_them_back(tmp_path):
    parser = cli.build_parser()
    argv = [
        "train",
        "--backend",
        "torch",
        "--out",
        str(tmp_path / "a b"),
        "--hidden",
        "16,8",
        "--lr",
        "0.0003",
        "--tensorboard",
        "--drop-last",
        "--devices",
        "2",
        "--stream",
        "--prefetch",
        "3",
        "--resize",
        "6,6",
        "--dataset",
        "images:-odd dir",
    ]
    opts = train_options(parser.parse_args(argv), parser)
    again = train_options(parser.parse_args(["train", *run_launch.train_argv(opts)]), parser)
    assert again == opts
    assert opts["hidden"] == (16, 8) and opts["tensorboard"] == "" and opts["devices"] == 2
    assert opts["stream"] is True and opts["prefetch"] == 3


def test_the_launcher_names_the_rank_a_signal_killed():
    def failure(exitcode: int, timestamp: int, pid: int = 7) -> SimpleNamespace:
        return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, pid=pid)

    # Rank 1 killed; rank 0 saw it first (exit 1) and was then stopped: rank 1 is the cause.
    status, message = run_launch.failure_report(
        {0: failure(1, 5), 1: failure(-9, 6, 42)}, 2, "nowhere"
    )
    assert status == 1
    assert message.startswith("rank 1 of 2 (pid 42) was killed by SIGKILL"), message
    assert "No epoch was committed in nowhere" in message
    # A rank that exited with a status printed why itself: its status, no second message.
    assert run_launch.failure_report({0: failure(2, 5), 1: failure(-15, 5)}, 2, "x") == (2, "")


def test_the_trainers_data_wait_counts_into_the_share(data, tmp_path, monkeypatch):
    # A trainer whose data_wait_s reports the 0.25 s its last train_epoch spent sleeping has
    # them counted, each epoch its own wait (a running total would be 0.5 s in epoch 2).
    import time

    from vae_tools import run

    made = run.make_trainer

    def waiting_trainer(*args, **kwargs):
        trainer = made(*args, **kwargs)

        class Waiting(type(trainer)):
            def train_epoch(self, *a, **k):
                time.sleep(0.25)
                return super().train_epoch(*a, **k)

            @property
            def data_wait_s(self) -> float:
                return 0.25

        trainer.__class__ = Waiting
        return trainer

    monkeypatch.setattr(run, "make_trainer", waiting_trainer)
    out = tmp_path / "run"
    assert cli.main(train_argv("torch", data, out, "--quiet")) == 0
    records = metrics(out)
    assert len(records) == EPOCHS
    for record in records:
        waited = record["data_wait_share"] * record["seconds"]
        # 0.25 s and the few milliseconds of forming the batch indices and the last batch.
        assert 0.25 <= waited < min(0.45, record["seconds"]), record
        assert record["devices"] == 1


# -- the ranks of the settings test --------------------------------------------------------------


def _ranks_with_different_settings(data: str, out: str) -> int:
    # Rank 1 asks for another learning rate.
    rank = int(os.environ["RANK"])
    argv = train_argv("torch", Path(data), Path(out), "--quiet")
    argv[argv.index("--lr") + 1] = "0.02" if rank else "0.01"
    return cli.main(argv)


if __name__ == "__main__":
    status = _ranks_with_different_settings(sys.argv[1], sys.argv[2])
    run_launch.exit_process(status)
