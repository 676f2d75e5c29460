"""``vae train`` killed with SIGKILL at every point where the run directory changes.

A run makes its writes in a fixed order (``vae_tools.run_dir``); the test hook ``KILL_ENV`` makes
the process kill itself right after the N-th one (kill point 1 is the lock, before any write).
Between two kill points only memory changes, so killing at each of them reaches every state the
directory can be left in. After each kill the directory must be consistent: the manifest's
claims hold, except for epoch files that lead it by one epoch in write order, and every file is
whole. ``--resume`` must then end bit-identical to an uninterrupted run: weights and Adam's
moments compared tensor by tensor, the same metrics but for wall time.

The runs are children forked by ``fork_server.py`` (imports paid once), so the killed, resumed
and uninterrupted runs share one numerical set-up (one torch thread, JAX without x64). Torch is
killed at every point and at pairs of points (a resume killed again); JAX at a few points. A
run with a validation split (``--val-split``: ``best.safetensors`` after the checkpoint in
every epoch that improves the validation -ELBO) is killed at every point too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from idx_files import write_idx_dir
from run_helpers import assert_manifest_holds, assert_same_run, file_epoch, sha256, train_args

from vae_common.checkpoint import load_checkpoint, load_tensors
from vae_tools.run_dir import KILL_ENV

pytestmark = pytest.mark.slow

EPOCHS = 2
EPOCH_FILES = ("metrics.jsonl", "train_state.safetensors", "checkpoint.safetensors")
BEST = "best.safetensors"
VAL_SPLIT = ["--val-split", "32"]
PLOTS = ("reconstructions.png", "samples.png", "loss_curves.png", "latent_space.png")
# The lock; the epoch-0 manifest; per epoch its three files and its manifest; the plots and the
# manifest that records them.
KILL_POINTS = 1 + 1 + 4 * EPOCHS + len(PLOTS) + 1
HERE = Path(__file__).parent


class ForkServer:
    """``fork_server.py`` as a subprocess: ``run(argv, out)`` returns the child's status."""

    def __init__(self, backends: list[str], tmp: Path) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "JAX_PLATFORMS": "cpu",
            "JAX_ENABLE_X64": "0",
            "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fork_server.py"), *backends],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=HERE.parent,
        )
        assert "ready" in json.loads(self.proc.stdout.readline())
        self.count = 0

    def run(self, argv: list[str], kill_at: int | None = None) -> tuple[int, str]:
        """Run ``vae ARGV``; returns (status, its output)."""
        self.count += 1
        log = self.logs / f"{self.count}.log"
        env = {KILL_ENV: str(kill_at)} if kill_at is not None else {}
        request = {"argv": argv, "env": env, "log": str(log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the fork server died"
        return json.loads(reply)["status"], log.read_text() if log.exists() else ""

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ForkServer(["torch", "jax"], tmp_path_factory.mktemp("fork-server"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_idx_dir(tmp_path_factory.mktemp("idx") / "idx", n_train=128, n_test=32, size=8)


@pytest.fixture(scope="module")
def references(server, data, tmp_path_factory) -> dict[str, Path]:
    """``{backend: directory}`` of an uninterrupted run (``"torch-val"``: with a validation
    split)."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for name, backend, extra in (
        ("torch", "torch", []),
        ("jax", "jax", []),
        ("torch-val", "torch", VAL_SPLIT),
    ):
        runs[name] = root / name
        status, log = server.run(train_argv(backend, data, runs[name], *extra))
        assert status == 0, log
    return runs


def train_argv(backend: str, data: Path, out: Path, *extra: str) -> list[str]:
    return train_args(
        backend,
        f"idx:{data}",
        out,
        *extra,
        epochs=EPOCHS,
        batch_size=32,
        hidden=16,
        latent_dim=2,
        device="cpu",
        quiet=True,
    )


def strict_json_lines(path: Path) -> list[dict]:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def assert_consistent(out: Path) -> None:
    """The state a kill may leave: see the module docstring."""
    names = {p.name for p in out.iterdir()}
    allowed = {"run.json", ".vae-train.lock", *EPOCH_FILES, BEST, *PLOTS}
    assert names <= allowed, f"unexpected files (a write left half-done?): {names - allowed}"
    if "run.json" not in names:
        assert names == {".vae-train.lock"}, names
        return
    body = json.loads((out / "run.json").read_text())
    committed = body["epoch"]
    leading = []
    for name in EPOCH_FILES:
        entry = body["files"].get(name)
        if not (out / name).exists():
            assert entry is None, f"run.json vouches for {name}, which is missing"
            continue
        if entry is not None and entry["sha256"] == sha256(out / name):
            assert entry["epoch"] == committed == file_epoch(out / name), name
        else:
            assert file_epoch(out / name) == committed + 1, f"{name} neither committed nor next"
            leading.append(name)
    assert leading == list(EPOCH_FILES[: len(leading)]), f"files lead out of write order: {leading}"
    # The best checkpoint: the one the manifest vouches for (of an epoch up to the committed
    # one), or the next epoch's, written after all three epoch files.
    entry = body["files"].get(BEST)
    if (out / BEST).exists():
        if entry is not None and entry["sha256"] == sha256(out / BEST):
            assert entry["epoch"] == file_epoch(out / BEST) <= committed
        else:
            assert file_epoch(out / BEST) == committed + 1, "best.safetensors neither committed"
            assert leading == list(EPOCH_FILES), f"best.safetensors led {leading}"
    else:
        assert entry is None, "run.json vouches for best.safetensors, which is missing"
    for name in PLOTS:
        entry = body["files"].get(name)
        if entry is not None:
            assert entry["sha256"] == sha256(out / name), f"run.json's {name} is not on disk"
        if (out / name).exists():
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    if committed:
        assert all((out / n).exists() for n in EPOCH_FILES)
    # Every file whole: each loads, and the weights agree where the epochs do.
    records = strict_json_lines(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    if (out / "train_state.safetensors").exists():
        state, meta = load_tensors(out / "train_state.safetensors")
        if (out / "checkpoint.safetensors").exists():
            weights, _, ckpt_meta = load_checkpoint(out / "checkpoint.safetensors")
            if ckpt_meta["epoch"] == meta["epoch"]:
                assert all((state["param." + n] == v).all() for n, v in weights.items())


def kill_and_resume(
    server: ForkServer, argv: list[str], out: Path, reference: Path, kill_points: list[int]
) -> None:
    """Kill a fresh run at ``kill_points[0]``, each resume at the next one, then resume to the
    end; the directory is checked after every kill and compared with ``reference`` at the end."""
    for i, point in enumerate(kill_points):
        status, log = server.run(argv + (["--resume"] if i else []), kill_at=point)
        assert status == -9, f"kill point {point} not reached (status {status}): {log}"
        assert_consistent(out)
    status, log = server.run(argv + ["--resume"])
    assert status == 0, log
    assert_manifest_holds(out, EPOCHS)
    assert set(PLOTS) <= {p.name for p in out.iterdir()}
    assert_same_run(out, reference)
    if (reference / BEST).exists():
        got, _, got_meta = load_checkpoint(out / BEST)
        want, _, want_meta = load_checkpoint(reference / BEST)
        assert got_meta == want_meta
        assert all(np.array_equal(got[n], want[n]) for n in want), "best weights differ"


def test_torch_killed_at_every_write_resumes_bit_identical(server, data, references, tmp_path):
    reference = references["torch"]
    for point in range(1, KILL_POINTS + 1):
        out = tmp_path / f"kill-{point}"
        kill_and_resume(server, train_argv("torch", data, out), out, reference, [point])
    # One past the last kill point is never reached: every write above had its kill.
    out = tmp_path / "past-the-end"
    status, log = server.run(train_argv("torch", data, out), kill_at=KILL_POINTS + 1)
    assert status == 0, log
    assert_same_run(out, reference)


# A resume killed in turn: after the train state of epoch 1 (the resume rewrites the checkpoint
# and commits), in the middle of epoch 2's writes, and during the plots.
TWICE = [(5, 3), (9, 5), (12, 6)]


def test_torch_resume_killed_again_resumes_bit_identical(server, data, references, tmp_path):
    for points in TWICE:
        out = tmp_path / f"kill-{points[0]}-then-{points[1]}"
        argv = train_argv("torch", data, out)
        kill_and_resume(server, argv, out, references["torch"], list(points))


# JAX at a few points: within the first epoch's writes, between the train state and the
# checkpoint of the last epoch (the kill of the issue), and during the plots.
JAX_POINTS = [3, 4, 8, 12]


def test_jax_killed_at_some_writes_resumes_bit_identical(server, data, references, tmp_path):
    for point in JAX_POINTS:
        out = tmp_path / f"kill-{point}"
        kill_and_resume(server, train_argv("jax", data, out), out, references["jax"], [point])


def test_a_run_with_a_validation_split_killed_at_every_write_resumes_bit_identical(
    server, data, references, tmp_path
):
    reference = references["torch-val"]
    metrics = strict_json_lines(reference / "metrics.jsonl")
    # One more write in every epoch whose validation -ELBO is the lowest so far.
    improved = sum(
        1
        for i, m in enumerate(metrics)
        if all(m["val_neg_elbo"] < p["val_neg_elbo"] for p in metrics[:i])
    )
    points = KILL_POINTS + improved
    argv = train_argv("torch", data, tmp_path / "unused", *VAL_SPLIT)
    for point in range(1, points + 1):
        out = tmp_path / f"kill-{point}"
        argv[argv.index("--out") + 1] = str(out)
        kill_and_resume(server, list(argv), out, reference, [point])
    out = tmp_path / "past-the-end"
    argv[argv.index("--out") + 1] = str(out)
    status, log = server.run(argv, kill_at=points + 1)
    assert status == 0, log
    assert_same_run(out, reference)
