"""``Trainer(compile="cudagraph")``: the whole torch step replayed as a CUDA graph.

No GPU is needed: the graphed trainer runs on the CPU through a stand-in for ``torch.cuda``'s
graph API (``graph_standin.CPU_GRAPHS``), which records the captured kernels and replays them on
the captured tensors, and refuses a host read during the capture as CUDA does. Its steps must be
the eager trainer's, bit for bit in float64 (the same kernels on the same numbers), through KL
warm-up, dynamic binarization, an odd-sized last batch, resumes and reloads. The test marked
``cuda`` runs the real graph API and is skipped without a GPU.
"""

import json
import types

import numpy as np
import pytest
import torch
from graph_standin import CPU_GRAPHS, CaptureError, RecordedGraph

import vae_jax
import vae_jax.trainer
import vae_torch
import vae_torch.trainer
from vae_common.checkpoint import load_checkpoint
from vae_common.config import VAEConfig
from vae_common.data import batch_indices
from vae_common.errors import ConfigError, DeviceError
from vae_common.spec import init_canonical
from vae_common.trainer_checks import COMPILE_MODES, check_compile
from vae_common.training import TrainConfig
from vae_tools import cli
from vae_torch._cuda_graph import MAX_GRAPHS, GraphedStep

CONFIG = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
N = 70  # batches of 16: 4 full steps per epoch, and a last batch of 6 left for run_steps
BATCH = 16


class GraphTrainer(vae_torch.Trainer):
    """The torch Trainer with the CPU stand-in for the graph API."""

    _graph_api = CPU_GRAPHS


def images(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8))


def make(cls, train: TrainConfig, dtype: str = "float64", compile=False, seed: int = 0, **kw):
    trainer = cls(CONFIG, train, dtype, device="cpu", compile=compile, **kw)
    trainer.load_state_dict(init_canonical(CONFIG, seed=seed, dtype=dtype))
    return trainer


def train_both(train: TrainConfig, dtype: str = "float64", **kw):
    """The eager and the graphed trainer, each trained on the same two epochs and one odd-sized
    ``run_steps`` batch; returns both trainers and their losses."""
    x = images()
    last = images(seed=1, n=6)[None].astype(dtype)
    noise = np.random.default_rng(2).standard_normal((1, 6, CONFIG.latent_dim)).astype(dtype)
    out = []
    for cls, compile in ((vae_torch.Trainer, False), (GraphTrainer, "cudagraph")):
        trainer = make(cls, train, dtype, compile, **kw)
        data = trainer.put_data(x.astype(dtype))
        losses = [trainer.train_epoch(data, batch_indices(N, BATCH, 0, e), 7, e) for e in (0, 1)]
        losses.append(trainer.run_steps(last, noise))
        out.append((trainer, np.concatenate(losses)))
    return out


def assert_same_state(a, b):
    assert a.step == b.step
    for got, want in (
        (b.state_dict(), a.state_dict()),
        (b.optimizer_state_dict(), a.optimizer_state_dict()),
    ):
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize(
    "train",
    [
        TrainConfig(warmup_steps=5, binarize="dynamic"),
        TrainConfig(beta=0.5, free_bits=0.05, lr=3e-3),
    ],
    ids=["warmup-dynamic", "free-bits"],
)
def test_graphed_steps_are_the_eager_steps_bit_for_bit(train):
    (eager, want), (graphed, got) = train_both(train)
    assert got.shape == (9,)
    # The KL weight changes over the first 5 steps, the binarization every step: both must
    # reach the graph through its static tensors, not as values frozen at capture.
    np.testing.assert_array_equal(got, want)
    assert_same_state(eager, graphed)
    step = graphed._compiled_step
    # One graph per batch shape: the epoch's full batches and the odd-sized last one, each
    # captured once and replayed for every step of its shape.
    assert step.shapes == [(BATCH, 1, 8, 8), (6, 1, 8, 8)]
    assert [c.graph.replays for c in step._captured.values()] == [8, 1]


def test_the_odd_batch_never_replays_the_full_batchs_graph():
    # A batch of another shape (here one row fewer) gets its own graph, and both graphs keep
    # giving the eager numbers when the shapes alternate.
    train = TrainConfig(warmup_steps=3)
    eager, graphed = make(vae_torch.Trainer, train), make(GraphTrainer, train, compile="cudagraph")
    rng = np.random.default_rng(3)
    for b in (16, 15, 16, 15, 16):
        # Two steps per call: each loss is its own step's, not the graph's last output.
        xs = rng.random((2, b, 1, 8, 8))
        eps = rng.standard_normal((2, b, CONFIG.latent_dim))
        np.testing.assert_array_equal(graphed.run_steps(xs, eps), eager.run_steps(xs, eps))
    assert graphed._compiled_step.shapes == [(16, 1, 8, 8), (15, 1, 8, 8)]
    assert_same_state(eager, graphed)


def test_shapes_past_the_graph_limit_take_the_eager_step():
    train = TrainConfig(warmup_steps=4)
    eager, graphed = make(vae_torch.Trainer, train), make(GraphTrainer, train, compile="cudagraph")
    rng = np.random.default_rng(4)
    assert MAX_GRAPHS == 4
    sizes = (9, 10, 11, 12, 13, 14, 9, 13)  # 13 and 14: past the four graphs
    for b in sizes:
        xs = rng.random((2, b, 1, 8, 8))
        eps = rng.standard_normal((2, b, CONFIG.latent_dim))
        np.testing.assert_array_equal(graphed.run_steps(xs, eps), eager.run_steps(xs, eps))
    assert [s[0] for s in graphed._compiled_step.shapes] == [9, 10, 11, 12]
    assert_same_state(eager, graphed)


def test_bf16_graphed_steps_are_the_eager_ones():
    # The precision's contexts (autocast on the CPU here) apply inside the capture.
    (eager, want), (graphed, got) = train_both(
        TrainConfig(warmup_steps=2), "float32", precision="bf16"
    )
    np.testing.assert_array_equal(got, want)
    assert_same_state(eager, graphed)


def test_resume_after_graph_steps_continues_the_eager_run():
    train = TrainConfig(warmup_steps=6, binarize="dynamic")
    x = images()
    eager = make(vae_torch.Trainer, train)
    data = eager.put_data(x)
    want = [eager.train_epoch(data, batch_indices(N, BATCH, 0, e), 7, e) for e in (0, 1)]

    first = make(GraphTrainer, train, compile="cudagraph")
    got = [first.train_epoch(first.put_data(x), batch_indices(N, BATCH, 0, 0), 7, 0)]
    weights, moments, step = first.state_dict(), first.optimizer_state_dict(), first.step
    assert step == 4 and any(np.abs(v).max() > 0 for v in moments.values())
    resumed = GraphTrainer(CONFIG, train, "float64", device="cpu", compile="cudagraph")
    resumed.load_state_dict(weights)
    resumed.load_optimizer_state_dict(moments, step)
    got.append(resumed.train_epoch(resumed.put_data(x), batch_indices(N, BATCH, 0, 1), 7, 1))
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    assert_same_state(eager, resumed)


def test_loading_state_into_a_graphed_trainer_drops_its_graphs():
    # The graphs update the very tensors they were captured on; load_state_dict makes a new
    # optimizer and load_optimizer_state_dict new moments, so replaying an old graph would
    # update stale state. Each load must lead to a new capture and the eager numbers.
    train = TrainConfig(warmup_steps=3)
    x = images()
    eager, graphed = make(vae_torch.Trainer, train), make(GraphTrainer, train, compile="cudagraph")
    data_e, data_g = eager.put_data(x), graphed.put_data(x)
    other = init_canonical(CONFIG, seed=5, dtype="float64")
    for trainer, data in ((eager, data_e), (graphed, data_g)):
        trainer.train_epoch(data, batch_indices(N, BATCH, 0, 0), 7, 0)
        moments, step = trainer.optimizer_state_dict(), trainer.step
        trainer.load_state_dict(other)
        trainer.train_epoch(data, batch_indices(N, BATCH, 0, 1), 7, 1)
        trainer.load_optimizer_state_dict(moments, step)
        trainer.losses = trainer.train_epoch(data, batch_indices(N, BATCH, 0, 2), 7, 2)
    np.testing.assert_array_equal(graphed.losses, eager.losses)
    assert_same_state(eager, graphed)


def test_capture_refuses_a_host_read():
    # The stand-in keeps CUDA's rule that a capture may not read a value back (a sync), which
    # is what the graphed step's static KL weight must avoid.
    a = torch.ones(3)
    with pytest.raises(CaptureError, match="_local_scalar_dense"):
        with CPU_GRAPHS.graph(RecordedGraph()):
            (a * 2).sum().item()


def test_compile_modes_are_explicit_in_both_backends():
    assert COMPILE_MODES == (False, True, "cudagraph")
    assert [check_compile(m) for m in COMPILE_MODES] == [False, True, "cudagraph"]
    for trainer in (vae_torch.Trainer, vae_jax.Trainer):
        assert trainer(CONFIG, compile=False).compile is False
        for bad in (1, 0, None, "yes", "CUDAGRAPH", "reduce-overhead", np.bool_(True)):
            with pytest.raises(
                ConfigError, match=f"compile must be False, True or 'cudagraph', got {bad!r}"
            ):
                trainer(CONFIG, compile=bad)


def test_cudagraph_is_refused_off_cuda_with_one_message_in_both_backends():
    messages = []
    for trainer in (vae_torch.Trainer, vae_jax.Trainer):
        with pytest.raises(DeviceError) as info:
            trainer(CONFIG, device="cpu", compile="cudagraph")
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0] == (
        "compile='cudagraph' replays the training step as a CUDA graph and needs a CUDA device, "
        "got 'cpu'; use compile=True or compile=False there"
    )


def test_which_jax_devices_count_as_cuda():
    # JAX says "gpu" for NVIDIA and AMD GPUs alike; the platform version tells them apart.
    def device(platform, version):
        return types.SimpleNamespace(
            platform=platform, client=types.SimpleNamespace(platform_version=version)
        )

    assert vae_jax.trainer.on_cuda(device("gpu", "PJRT C API\ncuda 12080"))
    assert not vae_jax.trainer.on_cuda(device("gpu", "PJRT C API\nrocm 60342"))
    assert not vae_jax.trainer.on_cuda(device("cpu", "cpu"))
    assert not vae_jax.trainer.on_cuda(device("tpu", "PJRT C API\nTFRT TPU v5"))
    assert vae_torch.trainer.on_cuda(torch.device("cuda", 1))
    assert not vae_torch.trainer.on_cuda(torch.device("cpu"))


def test_the_graphed_trainer_marks_its_optimizers_capturable():
    trainer = make(GraphTrainer, TrainConfig(), compile="cudagraph")
    assert all(g["capturable"] for g in trainer.optimizer.param_groups)
    trainer.load_state_dict(init_canonical(CONFIG, seed=1, dtype="float64"))
    assert all(g["capturable"] for g in trainer.optimizer.param_groups)
    # The other modes keep torch's default optimizer.
    eager = make(vae_torch.Trainer, TrainConfig())
    assert not any(g["capturable"] for g in eager.optimizer.param_groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphed_steps_are_the_eager_steps_in_float32_on_the_gpu():
    x = images().astype(np.float32)
    train = TrainConfig(warmup_steps=5, binarize="dynamic")
    out = []
    for compile in (False, "cudagraph"):
        trainer = vae_torch.Trainer(CONFIG, train, "float32", device="cuda", compile=compile)
        trainer.load_state_dict(init_canonical(CONFIG, seed=0, dtype="float32"))
        data = trainer.put_data(x)
        losses = [trainer.train_epoch(data, batch_indices(N, BATCH, 0, e), 7, e) for e in (0, 1)]
        out.append((np.concatenate(losses), trainer.state_dict()))
    (want, w_want), (got, w_got) = out
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for k in w_want:
        np.testing.assert_allclose(w_got[k], w_want[k], rtol=1e-4, atol=1e-6, err_msg=k)


# -- vae train --cuda-graph ----------------------------------------------------------------------


def vae(capsys, *argv):
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def train_args(out, *extra):
    return (
        "train",
        "--backend",
        "torch",
        "--dataset",
        "digits",
        "--hidden",
        "16",
        "--latent-dim",
        "2",
        "--dtype",
        "float64",
        "--warmup-steps",
        "10",
        "--binarize",
        "dynamic",
        "--out",
        str(out),
        "--quiet",
        *extra,
    )


@pytest.fixture
def stand_in_cuda(monkeypatch):
    """``vae train --cuda-graph`` on the CPU: the device check passes and the torch Trainer
    replays through the stand-in graph API; returns the batch shapes captured, in order."""
    monkeypatch.setattr(vae_torch.trainer, "on_cuda", lambda device: True)
    monkeypatch.setattr(vae_torch.trainer.Trainer, "_graph_api", CPU_GRAPHS)
    captured = []

    class Spy(GraphedStep):
        def _capture(self, x, eps, beta):
            captured.append(tuple(x.shape))
            return super()._capture(x, eps, beta)

    monkeypatch.setattr(vae_torch.trainer, "GraphedStep", Spy)
    return captured


def flags_of(out):
    return json.loads((out / "run.json").read_text())["settings"]["flags"]


@pytest.mark.slow
def test_vae_train_cuda_graph_is_the_eager_run_and_resumes(tmp_path, capsys, stand_in_cuda):
    # Digits' 1,500 training images in batches of 128: 11 graphed steps and an odd last batch
    # of 92 (its own graph) per epoch, KL warm-up over 10 steps, dynamic binarization.
    eager, graphed = tmp_path / "eager", tmp_path / "graphed"
    assert vae(capsys, *train_args(eager, "--epochs", "2"))[0] == 0
    status, _, err = vae(capsys, *train_args(graphed, "--epochs", "1", "--cuda-graph"))
    assert status == 0, err
    assert stand_in_cuda == [(128, 1, 8, 8), (92, 1, 8, 8)]
    assert flags_of(graphed)["cuda_graph"] is True and flags_of(eager)["cuda_graph"] is False
    # --resume takes --cuda-graph from the run's record.
    status, _, err = vae(capsys, "train", "--out", str(graphed), "--resume", "--epochs", "2")
    assert status == 0, err
    assert stand_in_cuda[2:] == [(128, 1, 8, 8), (92, 1, 8, 8)]  # a new trainer: new graphs
    assert flags_of(graphed)["cuda_graph"] is True
    want, _, _ = load_checkpoint(eager / "checkpoint.safetensors")
    got, _, _ = load_checkpoint(graphed / "checkpoint.safetensors")
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # The recorded flags round-trip: a run started from run.json replays too.
    copy = tmp_path / "copy"
    status, _, err = vae(
        capsys, "train", "--config", str(graphed / "run.json"), "--out", str(copy), "--epochs", "1"
    )
    assert status == 0, err
    assert flags_of(copy) == {**flags_of(graphed), "epochs": 1}


def test_runs_recorded_before_cuda_graph_still_resume(tmp_path, capsys):
    out = tmp_path / "old"
    assert vae(capsys, *train_args(out, "--epochs", "1"))[0] == 0
    record = json.loads((out / "run.json").read_text())
    del record["settings"]["flags"]["cuda_graph"]  # as written before the flag existed
    (out / "run.json").write_text(json.dumps(record))
    status, _, err = vae(capsys, "train", "--out", str(out), "--resume", "--epochs", "2")
    assert status == 0, err
    assert flags_of(out)["cuda_graph"] is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ("--cuda-graph",),
            "vae train: error: --cuda-graph needs a CUDA device, got 'cpu' (torch, --device cpu)",
        ),
        (
            ("--cuda-graph", "--compile"),
            "vae train: error: give --compile (a compiled step) or --cuda-graph",
        ),
        (
            ("--cuda-graph", "--devices", "2"),
            "vae train: error: --cuda-graph replays torch's step on one device, got --devices 2",
        ),
    ],
    ids=["cpu", "with-compile", "devices"],
)
def test_vae_train_cuda_graph_refusals_exit_2_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    status, stdout, err = vae(capsys, *train_args(out, "--epochs", "1", "--device", "cpu", *extra))
    assert status == 2 and stdout == ""
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()
