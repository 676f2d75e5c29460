"""``vae train --stream [--prefetch K]``: the training images stay on the host and go to the
device batch by batch (``Trainer.put_data(x, stream=True)``), with the run's files those of the
resident run (tiny model, float64, dynamic binarization, 2 epochs, each ending in a smaller last
batch). Streaming is not recorded: a run resumes with or without it, to the same numbers. The
seconds a streamed epoch waits for its batches (``trainer.data_wait_s``) count into the run's
``data_wait_share``. A ``--prefetch`` without ``--stream`` is bad input (exit status 2).

A streamed run keeps the IDX files' uint8 pixels on the host (``load_dataset(...,
keep_uint8=True)``), a quarter of the float32 bytes, and its files are still the resident run's:
the device makes each batch's floats by the loaders' k / 255. A statically binarized run streams
float32 (the binarization draws from the float images); a validation split is taken from the
uint8 images and evaluated as float32. In-process: ``vae_tools.cli.main``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from idx_files import write_idx_dir
from run_helpers import train_args

from vae_common.checkpoint import load_checkpoint, load_tensors
from vae_common.compare import TOLERANCES, rel_diff
from vae_common.data import IDX_FILES
from vae_common.streaming import HostData
from vae_tools import cli

F64 = TOLERANCES["float64"]
# 37 training images in batches of 8: 4 full batches and a last batch of 5 every epoch.
N_TRAIN, BATCH, EPOCHS = 37, 8, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_idx_dir(tmp_path_factory.mktemp("idx") / "idx", N_TRAIN, 12, size=4, seed=11)


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
        binarize="dynamic",
        lr=0.01,
        seed=4,
        device="cpu",
        quiet=True,
    )


def vae(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def resident(data, tmp_path_factory) -> dict[str, Path]:
    """``{backend: directory}`` of the run with its images on the device."""
    root = tmp_path_factory.mktemp("resident")
    runs = {}
    for backend in ("jax", "torch"):
        runs[backend] = root / backend
        assert cli.main(train_argv(backend, data, runs[backend])) == 0
    return runs


def assert_same_run(got: Path, want: Path, n_train: int = N_TRAIN) -> float:
    """Every checkpoint and train-state tensor (weights and Adam's moments), the metadata and
    every per-step loss of ``got`` are ``want``'s within the float64 tolerance; returns the
    worst relative difference."""
    g, g_config, g_meta = load_checkpoint(got / "checkpoint.safetensors")
    w, w_config, w_meta = load_checkpoint(want / "checkpoint.safetensors")
    assert (g_config, g_meta) == (w_config, w_meta) and sorted(g) == sorted(w)
    worst = {f"checkpoint {n}": rel_diff(g[n], w[n]) for n in w}
    gs, gs_meta = load_tensors(got / "train_state.safetensors")
    ws, ws_meta = load_tensors(want / "train_state.safetensors")
    assert sorted(gs) == sorted(ws) and gs_meta == ws_meta
    worst.update({f"train state {n}": rel_diff(gs[n], ws[n]) for n in ws})
    gm, wm = metrics(got), metrics(want)
    assert [(m["epoch"], m["step"]) for m in gm] == [(m["epoch"], m["step"]) for m in wm]
    for a, b in zip(gm, wm, strict=True):
        assert len(a["train_losses"]) == -(-n_train // BATCH)
        worst[f"epoch {b['epoch']} losses"] = rel_diff(a["train_losses"], b["train_losses"])
    assert all(np.isfinite(v) for v in worst.values())
    assert max(worst.values()) <= F64, worst
    print(f"{got.name}: max rel diff {max(worst.values()):.1e}")
    return max(worst.values())


def spy_put_data(monkeypatch) -> list[object]:
    """What every trainer the run makes returns from ``put_data``, in order."""
    from vae_tools import run

    made = run.make_trainer
    given: list[object] = []

    def spied(*args, **kwargs):
        trainer = made(*args, **kwargs)
        put_data = trainer.put_data

        def put(*a, **k):
            given.append(put_data(*a, **k))
            return given[-1]

        trainer.put_data = put
        return trainer

    monkeypatch.setattr(run, "make_trainer", spied)
    return given


def stored_pixels(data: Path) -> np.ndarray:
    """The training images of the IDX files, (N, 1, H, W) uint8, read here from the bytes."""
    blob = (data / IDX_FILES["train_images"]).read_bytes()
    n, h, w = np.frombuffer(blob[4:16], ">u4")
    return np.frombuffer(blob[16:], np.uint8).reshape(int(n), 1, int(h), int(w))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_streamed_run_writes_the_resident_runs_files(
    backend, data, resident, tmp_path, monkeypatch
):
    given = spy_put_data(monkeypatch)
    out = tmp_path / "streamed"
    assert cli.main(train_argv(backend, data, out, "--stream", "--prefetch", "1")) == 0
    # The training images stayed on the host in the files' dtype: the stored uint8 pixels.
    assert len(given) == 1 and isinstance(given[0], HostData), given
    assert given[0].prefetch == 1 and given[0].images.dtype == np.uint8
    assert given[0].shape == (N_TRAIN, 1, 4, 4)
    assert np.array_equal(given[0].images, stored_pixels(data))
    # The same floats on the device as the resident images: the same numbers, bit for bit.
    assert assert_same_run(out, resident[backend]) == 0.0
    # Not recorded: the run's flags say nothing of it.
    flags = json.loads((out / "run.json").read_text())["settings"]["flags"]
    assert "stream" not in flags and "prefetch" not in flags


@pytest.mark.parametrize("first, then", [(["--stream"], []), ([], ["--stream"])])
def test_a_run_resumes_with_or_without_streaming(first, then, data, resident, tmp_path):
    out = tmp_path / "run"
    assert cli.main(train_argv("torch", data, out, *first, "--epochs", "1")) == 0
    assert len(metrics(out)) == 1
    assert cli.main(train_argv("torch", data, out, *then, "--resume")) == 0
    assert_same_run(out, resident["torch"])


def test_a_streamed_epoch_counts_its_wait_for_data_into_the_share(data, tmp_path, monkeypatch):
    # Every batch takes DELAY s to reach the device and none is moved ahead (--prefetch 0), so
    # the step loop waits about DELAY for each of the 4 full batches; the trainer's
    # data_wait_s says how long, and the epoch's share counts it.
    from vae_tools import run

    delay = 0.05
    made = run.make_trainer
    waits: list[float] = []

    def slow_trainer(*args, **kwargs):
        trainer = made(*args, **kwargs)
        put, epoch = trainer._put_batch, trainer.train_epoch

        def slow_put(x, batch):
            time.sleep(delay)
            return put(x, batch)

        def train_epoch(*a, **k):
            losses = epoch(*a, **k)
            waits.append(trainer.data_wait_s)
            return losses

        trainer._put_batch, trainer.train_epoch = slow_put, train_epoch
        return trainer

    monkeypatch.setattr(run, "make_trainer", slow_trainer)
    out = tmp_path / "slow"
    assert cli.main(train_argv("torch", data, out, "--stream", "--prefetch", "0")) == 0
    records = metrics(out)
    assert len(waits) == len(records) == EPOCHS
    for waited, record in zip(waits, records, strict=True):
        assert 3 * delay <= waited <= record["seconds"], (waited, record)
        # The share also holds forming the batch indices and the last batch on the host.
        assert waited <= record["data_wait_share"] * record["seconds"] + 1e-9, (waited, record)
    # Resident images: no wait at all.
    waits.clear()
    assert cli.main(train_argv("torch", data, tmp_path / "resident", "--epochs", "1")) == 0
    assert waits == [0.0]


def test_prefetch_without_stream_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = vae(capsys, *train_argv("torch", data, out, "--prefetch", "3"))
    assert status == 2 and err.count("\n") == 1, err
    assert "--prefetch 3 applies to streamed training data: give --stream too" in err, err
    assert not out.exists()
    # From a config file too.
    config = tmp_path / "opts.toml"
    config.write_text("prefetch = 1\n")
    status, _, err = vae(capsys, *train_argv("torch", data, out, "--config", str(config)))
    assert status == 2 and "--prefetch 1 applies to streamed training data" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, dtype, n",
    [
        # A validation split comes off the uint8 images; the held-out set is evaluated as float.
        (["--val-split", "5"], np.uint8, N_TRAIN - 5),
        # Static binarization draws from the float images: the streamed images are float32.
        (["--binarize", "static"], np.float32, N_TRAIN),
    ],
    ids=["val-split", "static"],
)
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_streamed_run_with_a_val_split_or_static_binarization_is_the_resident_run(
    backend, extra, dtype, n, data, tmp_path, monkeypatch
):
    resident = tmp_path / "resident"
    assert cli.main(train_argv(backend, data, resident, *extra)) == 0
    given = spy_put_data(monkeypatch)
    out = tmp_path / "streamed"
    assert cli.main(train_argv(backend, data, out, *extra, "--stream")) == 0
    assert len(given) == 1 and isinstance(given[0], HostData), given
    assert given[0].images.dtype == dtype and given[0].shape == (n, 1, 4, 4)
    if dtype == np.float32:
        assert set(np.unique(given[0].images)) <= {0.0, 1.0}
    assert assert_same_run(out, resident, n) == 0.0
    for a, b in zip(metrics(out), metrics(resident), strict=True):
        held_out = sorted(k for k in b if k.startswith(("val_", "test_")))
        assert held_out == sorted(k for k in a if k.startswith(("val_", "test_")))
        assert all(rel_diff(a[k], b[k]) <= F64 for k in held_out), (a, b)
        assert any(k.startswith("val_") for k in held_out) == ("--val-split" in extra)
