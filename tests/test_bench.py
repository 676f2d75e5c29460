"""The benchmark package, module by module, with no timing assertions.

Each library contender must train exactly as the library's ``Trainer`` does: its per-step losses
are compared with ``Trainer.train_epoch``'s for the same workload and seed. The CUDA-graph mode
runs on the CPU against a stand-in for ``torch.cuda``'s graph API that records the kernels of
the captured step and replays them on the same tensors.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from graph_standin import CPU_GRAPHS, RecordedGraph

import vae_common.data
from vae_common.config import VAEConfig
from vae_common.constants import (
    BENCH_UNTIMED_STEPS,
    DEFAULT_CONV_CHANNELS,
    DEFAULT_HIDDEN,
    DEFAULT_LATENT_DIM,
)
from vae_common.data import batch_indices
from vae_common.distributed import usable_cores
from vae_common.errors import ConfigError, DeviceError
from vae_common.training import TrainConfig
from vae_tools import bench
from vae_tools.bench import contenders, dp_worker, host, report, timing
from vae_tools.bench import data_parallel as dp
from vae_tools.bench import run as bench_run
from vae_tools.cli import main
from vae_tools.parity_dp import rank_threads
from vae_torch.train import cpu_compiler

TINY = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
EPOCHS = 2
RECORD_KEYS = {
    "backend",
    "mode",
    "arch",
    "device",
    "dtype",
    "precision",
    "precision_note",
    "batch_size",
    "samples_per_s",
    "steps_per_s",
    "compile_s",
    "repeats",
    "spread",
    "median_epoch_s",
    "first_epoch_s",
    "untimed_steps",
    "untimed_s",
    "samples_per_epoch",
    "gflops",
    "flush_denormal",
    "ratio_to_reference",
    "ceiling_fraction",
    "gemm_best_of_fraction",
    "gemm_adam_ceiling_fraction",
    "onednn_gemm_ceiling_fraction",
    "xla_gemm_ceiling_fraction",
}
HOST_KEYS = {
    "torch",
    "jax",
    "torch_threads",
    "cpu_count",
    "device",
    "float32_matmul_precision",
    "peak_gflops",
    "flops_per_sample",
    "gemm_ceiling_samples_per_s",
    "gemm_best_of_samples_per_s",
    "gemm_adam_ceiling_samples_per_s",
    "onednn_gemm_ceiling_samples_per_s",
    "xla_gemm_ceiling_samples_per_s",
    "adam_floor_s",
    "config",
}


def tiny_workload(dtype: str = "float64", **train) -> bench.Workload:
    # 64 samples in batches of 16: 4 steps per epoch.
    data = bench.make_data(TINY, 64, seed=1)
    return bench.Workload(TINY, data, 16, dtype, "cpu", seed=3, train=TrainConfig(**train))


def trainer_losses(backend: str, w: bench.Workload, epochs: int = EPOCHS) -> np.ndarray:
    """What the library's Trainer computes for ``w``: epochs 0.. from the canonical weights."""
    if backend == "jax":
        from vae_jax.train import Trainer
    else:
        from vae_torch.train import Trainer
    trainer = Trainer(w.config, w.train, w.dtype, device="cpu")
    trainer.load_state_dict(w.initial_weights())
    data = trainer.put_data(w.data)
    return np.concatenate(
        [trainer.train_epoch(data, w.batches(e), w.seed, e) for e in range(epochs)]
    )


def contender_losses(run_epoch, epochs: int = EPOCHS) -> np.ndarray:
    return np.concatenate([run_epoch(e) for e in range(epochs)])


# -- workload.py ---------------------------------------------------------------------------------


def test_flops_per_sample_matches_hand_count():
    # 784-400-20 MLP: forward 651,200 multiply-adds; backward twice that minus the first
    # layer's input gradient (313,600): 3.28 MFLOP per training sample.
    assert bench.flops_per_sample(VAEConfig()) == pytest.approx(3.28e6)


def test_flops_per_sample_counts_convolutions():
    cfg = VAEConfig(input_shape=(1, 8, 8), hidden=(), latent_dim=2, arch="conv", conv_channels=(2,))
    # conv 1->2 on 4x4 outputs (k=4): 16*2*16 = 512 MACs (first layer, x2 passes);
    # mean/logvar heads 32->2 each = 64 MACs each; project 2->32 = 64; deconv 2->1 from 4x4
    # inputs: 16*2*1*16 = 512 MACs; all but the first x3 passes.
    macs = 512 * 2 + (64 + 64 + 64 + 512) * 3
    assert bench.flops_per_sample(cfg) == 2 * macs


def test_default_config_is_the_shared_defaults():
    for arch in ("mlp", "conv"):
        cfg = bench.default_config(arch)
        assert (cfg.arch, cfg.hidden, cfg.latent_dim) == (arch, DEFAULT_HIDDEN[arch], 20)
        assert cfg.latent_dim == DEFAULT_LATENT_DIM and cfg.input_shape == (1, 28, 28)
    assert bench.default_config("conv").conv_channels == DEFAULT_CONV_CHANNELS
    assert bench.default_config("mlp", (3, 16, 16)).input_shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="arch"):
        bench.default_config("rnn")


def test_make_data_is_seeded_in_unit_range_with_a_dark_border():
    cfg = bench.default_config("mlp")
    x = bench.make_data(cfg, 5, seed=2)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x, bench.make_data(cfg, 5, seed=2))
    assert 0 <= x.min() and x.max() < 1
    border = x.copy()
    border[:, :, 4:-4, 4:-4] = 0
    assert not border.any() and x[:, :, 4:-4, 4:-4].min() < 0.01 < 0.99 < x.max()
    # Too small for a border: every pixel is drawn.
    assert (bench.make_data(TINY, 5)[:, :, 0, :] > 0).all()


def test_workload_batches_are_the_training_runs_batches():
    w = tiny_workload()
    assert w.steps == 4
    np.testing.assert_array_equal(w.batches(1), batch_indices(64, 16, 3, 1))
    assert set(w.initial_weights()) and all(
        v.dtype == np.float64 for v in w.initial_weights().values()
    )
    with pytest.raises(ConfigError, match="batch size 65"):
        bench.Workload(TINY, w.data, 65)


# -- contenders.py -------------------------------------------------------------------------------


def test_modes_are_the_contenders():
    assert bench.MODES == {
        "jax": ("step", "epoch"),
        "torch": ("eager", "compile", "cudagraph"),
        "reference": ("eager",),
    }
    with pytest.raises(ConfigError, match="torch/warp"):
        bench.make_contender("torch", "warp", tiny_workload())


@pytest.mark.parametrize("backend, mode", [("jax", "step"), ("jax", "epoch"), ("torch", "eager")])
def test_contender_losses_are_the_trainers(backend, mode):
    w = tiny_workload()
    got = contender_losses(bench.make_contender(backend, mode, w))
    assert got.shape == (EPOCHS * w.steps,)
    np.testing.assert_allclose(got, trainer_losses(backend, w), rtol=1e-12)


def test_jax_step_follows_the_trainer_under_kl_warm_up_and_binarization():
    # The step counter (KL weight) and the binarization key must be the epoch's too.
    w = tiny_workload(warmup_steps=5, binarize="dynamic")
    got = contender_losses(bench.make_contender("jax", "step", w))
    np.testing.assert_allclose(got, trainer_losses("jax", w), rtol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(cpu_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_torch_compile_losses_are_the_eager_trainers():
    w = tiny_workload()
    got = contender_losses(bench.make_contender("torch", "compile", w))
    # The compiled graph orders some sums differently: equal up to float64 rounding.
    np.testing.assert_allclose(got, trainer_losses("torch", w), rtol=1e-10)


def test_recorded_graph_replays_on_new_inputs():
    a, b = torch.ones(3), torch.full((3,), 2.0)
    graph = RecordedGraph()
    with CPU_GRAPHS.graph(graph):
        out = (a * 3 + b).sum()
    a.fill_(2.0)
    graph.replay()
    assert out.item() == 24.0


def test_torch_cudagraph_losses_are_the_trainers():
    w = tiny_workload()
    got = contender_losses(contenders.torch_cudagraph(w, graphs=CPU_GRAPHS))
    np.testing.assert_allclose(got, trainer_losses("torch", w), rtol=1e-12)


def test_torch_cudagraph_follows_the_trainer_under_kl_warm_up_and_binarization():
    # The contender is Trainer(compile="cudagraph"): the KL weight and the binarization of each
    # step are the eager Trainer's.
    w = tiny_workload(warmup_steps=5, binarize="dynamic")
    got = contender_losses(contenders.torch_cudagraph(w, graphs=CPU_GRAPHS))
    np.testing.assert_allclose(got, trainer_losses("torch", w), rtol=1e-12)


def test_torch_cudagraph_is_refused_off_cuda():
    with pytest.raises(DeviceError, match="needs a CUDA device, got 'cpu'"):
        bench.make_contender("torch", "cudagraph", tiny_workload())


def test_reference_step_is_the_summed_negative_elbo():
    # The baseline optimises what the library does, summed over the batch instead of averaged:
    # sigmoid + BCE is BCE-with-logits (float64: no clamping at these values).
    from vae_torch.losses import objective
    from vae_torch.model import build_model

    torch.manual_seed(0)
    model = build_model(TINY, "float64")
    x = torch.as_tensor(bench.make_data(TINY, 8, seed=4), dtype=torch.float64)
    with torch.no_grad():
        mean, _ = model.encode(x)
    torch.manual_seed(5)
    eps = torch.randn_like(mean)
    with torch.no_grad():
        expected = len(x) * objective(model, None, x, eps).item()
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(5)  # the step draws the same noise
    got = contenders.reference_step(model, torch.optim.Adam(model.parameters()), x)
    assert got == pytest.approx(expected, rel=1e-12)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_reference_contender_runs_seeded_epochs():
    w = tiny_workload()
    first = contender_losses(bench.make_contender("reference", "eager", w))
    again = contender_losses(bench.make_contender("reference", "eager", w))
    assert first.shape == (EPOCHS * w.steps,) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)


def test_the_reference_row_runs_torchs_blas_and_the_torch_rows_onednn(monkeypatch):
    # The canonical loop's dense layers are nn.Linear's F.linear; the library's eager trainer
    # takes oneDNN's products where this torch has them (vae_torch._onednn).
    from vae_torch import _onednn

    made = []
    real = _onednn._onednn_linear
    monkeypatch.setattr(_onednn, "_onednn_linear", lambda *a: made.append(1) or real(*a))
    w = tiny_workload("float32")
    bench.make_contender("reference", "eager", w)(0)
    assert made == []
    bench.make_contender("torch", "eager", w)(0)
    assert len(made) == (5 * w.steps if _onednn.available() else 0)


# -- timing.py -----------------------------------------------------------------------------------


def test_timed_epochs_are_interleaved_after_each_untimed_run():
    calls = []
    fns = [lambda e, name=name: calls.append((name, e)) for name in "abc"]
    timings = bench.measure_interleaved(fns, untimed_epochs=2, repeats=3)
    untimed = [(n, e) for n in "abc" for e in (0, 1)]
    rounds = [(n, 2 + r) for r in range(3) for n in "abc"]
    assert calls == untimed + rounds
    for t in timings:
        assert len(t["times_s"]) == 3 and t["median_s"] > 0 and t["compile_s"] >= 0
        assert t["spread"] == (max(t["times_s"]) - min(t["times_s"])) / t["median_s"]


def test_summarize_by_hand():
    s = timing.summarize([5.0, 1.5], [2.0, 1.0, 4.0])
    assert s == {
        "times_s": [2.0, 1.0, 4.0],
        "median_s": 2.0,
        "first_epoch_s": 5.0,
        "compile_s": 3.0,
        "untimed_s": 6.5,
        "spread": 1.5,
    }
    assert timing.summarize([1.0], [2.0])["compile_s"] == 0.0


# -- host.py -------------------------------------------------------------------------------------


def test_host_info_names_versions_and_settings():
    info = bench.host_info("cpu")
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert {"jax", "flax", "optax", "torch_threads", "cudnn_allow_tf32", "cpu_count"} <= set(info)
    assert "note" in bench.host_info("xpu")


def test_gemm_shapes_of_the_default_mlp():
    # Five dense layers: five forward products, four input gradients, five weight gradients.
    shapes = bench.gemm_shapes(VAEConfig(), 128)
    assert len(shapes) == 14
    assert shapes[:2] == [(128, 784, 400), (400, 128, 784)]
    macs = sum(m * k * n for m, k, n in shapes)
    assert 2 * macs / 128 == bench.flops_per_sample(VAEConfig())


def test_gemm_ceiling_is_for_mlps_and_positive():
    mlp = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    assert bench.gemm_ceiling(mlp, 32, "cpu", repeats=2) > 0
    conv = VAEConfig(
        input_shape=(1, 8, 8), hidden=(), latent_dim=2, arch="conv", conv_channels=(2,)
    )
    assert bench.gemm_ceiling(conv, 32, "cpu") is None
    assert host.matmul_peak_gflops("cpu", size=64) > 0


def test_the_other_ceilings_time_what_they_say(monkeypatch):
    mlp = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    # XLA's products: the same shapes, each through one jitted JAX dot.
    shapes = bench.gemm_shapes(mlp, 32)
    seconds = host.matmul_seconds(shapes, "cpu", "float32", repeats=2, loops=2, library="jax")
    assert len(seconds) == len(shapes) and all(s > 0 for s in seconds)
    fixed = [1e-4] * len(shapes)
    monkeypatch.setattr(host, "matmul_seconds", lambda *a, **k: fixed)
    assert bench.gemm_ceiling(mlp, 32, "cpu") == pytest.approx(32 / sum(fixed))
    assert host.adam_floor_seconds(mlp, "cpu", repeats=2, loops=2) > 0


def test_the_gemm_only_epoch_runs_every_product_of_every_step(monkeypatch):
    mlp = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    shapes = bench.gemm_shapes(mlp, 32)
    products, _ = host._torch_products(shapes, "cpu", "float32", "torch")
    for product, (m, k, n) in zip(products, shapes, strict=True):
        a, b = product.args
        assert (a.shape, b.shape) == ((m, k), (k, n))
        torch.testing.assert_close(product(), a @ b, rtol=0, atol=0)
    calls: list[object] = []
    monkeypatch.setattr(
        host,
        "_torch_products",
        lambda shapes, *a: (
            [lambda i=i: calls.append(i) for i in range(len(shapes))],
            lambda: calls.append("sync"),
        ),
    )
    host.gemm_only_epoch(mlp, 32, 3, "cpu")(0)
    assert calls == [*range(len(shapes))] * 3 + ["sync"]
    conv = VAEConfig(
        input_shape=(1, 8, 8), hidden=(), latent_dim=2, arch="conv", conv_channels=(2,)
    )
    assert host.gemm_only_epoch(conv, 32, 3, "cpu") is None


def test_onednn_products_are_a_times_w_transposed():
    made = host._torch_products([(5, 7, 3)], "cpu", "float32", "onednn")
    if made is None:
        assert not torch.backends.mkldnn.is_available(), "x86 torch builds have oneDNN"
        pytest.skip("this torch build has no oneDNN")
    (product,), _ = made
    a, w = product.args[:2]
    assert (a.shape, w.shape) == ((5, 7), (3, 7))
    torch.testing.assert_close(product(), a @ w.T)
    # oneDNN's linear is float32 here, and a CPU library.
    assert host._torch_products([(5, 7, 3)], "cpu", "float64", "onednn") is None
    with pytest.raises(ConfigError, match="unknown GEMM library 'blas'"):
        host._torch_products([(5, 7, 3)], "cpu", "float32", "blas")


def test_the_ceiling_is_timed_in_the_rows_rounds(monkeypatch):
    # The GEMM-only epoch is the last of the contenders measure_interleaved times together, and
    # the ceiling (and every row's ceiling_fraction) is its median epoch's samples/s.
    seen = []
    real = bench_run.measure_interleaved

    def spied(rounds, untimed, repeats):
        out = real(rounds, untimed, repeats)
        seen.append((list(rounds), [dict(t) for t in out]))
        return out

    monkeypatch.setattr(bench_run, "measure_interleaved", spied)
    result = bench.run_bench(
        config=TINY, samples=64, batch_sizes=(16,), repeats=2, modes={"torch": ["eager"]}
    )
    ((rounds, timings),) = seen
    assert len(rounds) == 2 and not isinstance(rounds[-1], dp.LastLosses)
    ceiling = result["host"]["gemm_ceiling_samples_per_s"]["16"]
    assert ceiling == pytest.approx(64 / timings[-1]["median_s"])
    (record,) = result["records"]
    assert record["median_epoch_s"] == timings[0]["median_s"]
    assert record["ceiling_fraction"] == pytest.approx(
        timings[-1]["median_s"] / timings[0]["median_s"]
    )


def test_adam_floor_times_real_adam_steps(monkeypatch):
    # The timed loop calls a torch Adam of the model's parameter shapes (fused where it can).
    made = []
    real = torch.optim.Adam

    def adam(params, **kwargs):
        made.append(([tuple(p.shape) for p in params], kwargs))
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    mlp = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    host.adam_floor_seconds(mlp, "cpu", repeats=1, loops=1)
    from vae_common.spec import param_spec

    assert made[-1][0] == [tuple(s.shape) for s in param_spec(mlp)]
    assert made[-1][1].get("fused") or made[-1][1].get("foreach")


# -- report.py -----------------------------------------------------------------------------------


def _record(backend, mode, samples_per_s, ratio):
    return {
        "backend": backend,
        "mode": mode,
        "arch": "mlp",
        "dtype": "float32",
        "batch_size": 64,
        "samples_per_s": samples_per_s,
        "ratio_to_reference": ratio,
        "gflops": 1.5,
        "compile_s": 0.25,
        "spread": 0.1,
    }


RESULT = {
    "records": [_record("reference", "eager", 1000.0, 1.0), _record("jax", "epoch", 2500.0, 2.5)],
    "host": {
        "device": "cpu",
        "processor": "x86_64",
        "cpu_count": 2,
        "torch": "2.13.0",
        "torch_threads": 2,
        "jax": "0.10.2",
        "flops_per_sample": 3.28e6,
        "peak_gflops": 137.0,
        "gemm_ceiling_samples_per_s": {"64": 4000.0},
    },
}


def test_format_table_rows_and_ceiling():
    lines = bench.format_table(RESULT).splitlines()
    assert lines[0].split() == [
        "backend",
        "mode",
        "batch",
        "samples/s",
        "x",
        "ref",
        "of",
        "ceiling",
        "GFLOP/s",
        "compile",
        "s",
        "spread",
    ]
    assert lines[2].split() == [
        "reference",
        "eager",
        "64",
        "1,000",
        "1.00",
        "-",
        "1.5",
        "0.25",
        "10.0%",
    ]
    assert lines[3].split()[:5] == ["jax", "epoch", "64", "2,500", "2.50"]
    assert "GEMM-only ceiling, batch 64: 4,000 samples/s = 4.00 x ref" in lines[4]
    assert "3.28 MFLOP per training sample; measured matmul peak 137 GFLOP/s" in lines[5]


def test_format_table_fraction_column_and_other_ceilings():
    result = json.loads(json.dumps(RESULT))
    result["records"][1]["ceiling_fraction"] = 0.625
    result["host"].update(
        adam_floor_s=2e-4,
        gemm_best_of_samples_per_s={"64": 4500.0},
        gemm_adam_ceiling_samples_per_s={"64": 3000.0},
        onednn_gemm_ceiling_samples_per_s={"64": 8000.0},
        xla_gemm_ceiling_samples_per_s={"64": 3500.0},
    )
    lines = bench.format_table(result).splitlines()
    assert lines[3].split()[:6] == ["jax", "epoch", "64", "2,500", "2.50", "0.62"]
    assert "timed in the rows' interleaved rounds" in lines[4]
    assert "each product timed alone, best of its loops: 4,500 samples/s" in lines[5]
    assert "with one fused Adam update (0.200 ms): 3,000 samples/s" in lines[6]
    assert "through torch's oneDNN matmul, best of loops: 8,000 samples/s" in lines[7]
    assert "as XLA runs them (one jitted dot each), best of loops: 3,500 samples/s" in lines[8]


def test_write_json_is_strict_json(tmp_path):
    path = tmp_path / "out" / "b.json"
    path.parent.mkdir()
    bench.write_json(RESULT, path)
    assert json.loads(path.read_text()) == RESULT
    bad = {"records": [_record("jax", "step", float("nan"), None)], "host": {}}
    with pytest.raises(ValueError):
        report.write_json(bad, tmp_path / "nan.json")


def test_save_plot_writes_a_png(tmp_path):
    path = tmp_path / "plots" / "b.png"
    bench.save_plot(RESULT, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- run.py and __init__.py ----------------------------------------------------------------------


def test_choose_skips_cudagraph_off_cuda_unless_asked():
    every = [(b, m) for b in ("reference", "jax", "torch") for m in bench.MODES[b]]
    assert bench.choose(("jax", "torch", "reference"), None, "cuda") == every
    assert ("torch", "cudagraph") not in bench.choose(("torch",), None, "cpu")
    assert bench.choose(("torch",), {"torch": ["cudagraph"]}, "cpu") == [("torch", "cudagraph")]
    with pytest.raises(ConfigError, match="no contender"):
        bench.choose(("jax",), {"torch": ["eager"]}, "cpu")
    with pytest.raises(DeviceError, match="cuda"):
        bench.run_bench(
            ("torch",), modes={"torch": ["cudagraph"]}, config=TINY, samples=32, batch_sizes=(16,)
        )


def test_run_bench_json_schema_on_a_tiny_setting(tmp_path):
    log = []
    modes = {"jax": ["step", "epoch"], "torch": ["eager"], "reference": ["eager"]}
    result = bench.run_bench(
        config=TINY,
        samples=64,
        batch_sizes=(16, 32),
        repeats=2,
        untimed_steps=6,
        modes=modes,
        log=log.append,
    )
    bench.write_json(result, tmp_path / "b.json")
    result = json.loads((tmp_path / "b.json").read_text())
    assert len(log) == 2 and "2 untimed epoch(s)" in log[0] and "3 untimed epoch(s)" in log[1]
    records = result["records"]
    assert [(r["backend"], r["mode"], r["batch_size"]) for r in records] == [
        (b, m, bs)
        for bs in (16, 32)
        for b, m in [("reference", "eager"), ("jax", "step"), ("jax", "epoch"), ("torch", "eager")]
    ]
    for r in records:
        assert set(r) == RECORD_KEYS
        steps = 64 // r["batch_size"]
        assert r["untimed_steps"] == (8 if steps == 4 else 6) and r["untimed_steps"] >= 6
        assert r["repeats"] == 2 and (r["arch"], r["dtype"], r["device"]) == (
            "mlp",
            "float32",
            "cpu",
        )
        assert r["samples_per_epoch"] == 64
        assert r["samples_per_s"] == pytest.approx(r["steps_per_s"] * r["batch_size"])
        assert r["samples_per_s"] == pytest.approx(64 / r["median_epoch_s"])
        assert r["gflops"] == pytest.approx(
            r["samples_per_s"] * result["host"]["flops_per_sample"] / 1e9
        )
        assert r["compile_s"] >= 0 and r["untimed_s"] >= r["first_epoch_s"] > 0
        assert r["flush_denormal"] == (r["backend"] == "torch")
        ref = next(
            x for x in records if x["backend"] == "reference" and x["batch_size"] == r["batch_size"]
        )
        assert r["ratio_to_reference"] == pytest.approx(r["samples_per_s"] / ref["samples_per_s"])
        for key, field in bench_run.CEILINGS.items():
            ceiling = result["host"][key][str(r["batch_size"])]
            assert r[field] == pytest.approx(r["samples_per_s"] / ceiling)
    host_info = result["host"]
    assert HOST_KEYS <= set(host_info)
    for key in bench_run.CEILINGS:
        assert set(host_info[key]) == {"16", "32"}
    # The bound with Adam: the same products' seconds plus one Adam update per step.
    for b in ("16", "32"):
        gemm_s = int(b) / host_info["gemm_ceiling_samples_per_s"][b]
        with_adam = host_info["gemm_adam_ceiling_samples_per_s"][b]
        assert with_adam == pytest.approx(int(b) / (gemm_s + host_info["adam_floor_s"]))
    assert host_info["adam_floor_s"] > 0
    assert VAEConfig.from_dict(host_info["config"]) == TINY


def test_bench_imports_no_framework_until_a_contender_runs():
    code = "import sys, vae_tools.bench; print(sorted({'torch', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the CLI -------------------------------------------------------------------------------------


class _Called(Exception):
    pass


@pytest.fixture
def bench_arguments(monkeypatch):
    """The keyword arguments ``vae bench`` hands to ``run_bench`` (which then stops the run)."""
    seen = {}

    def run_bench(**kwargs):
        seen.update(kwargs)
        raise _Called

    monkeypatch.setattr(bench, "run_bench", run_bench)
    return seen


def test_cli_untimed_steps_and_its_deprecated_alias(bench_arguments, capsys):
    with pytest.raises(_Called):
        main(["bench"])
    assert bench_arguments["untimed_steps"] == BENCH_UNTIMED_STEPS
    with pytest.raises(_Called):
        main(["bench", "--untimed-steps", "7"])
    assert bench_arguments["untimed_steps"] == 7
    assert "deprecated" not in capsys.readouterr().err
    with pytest.raises(_Called):
        main(["bench", "--warmup-steps", "5"])
    assert bench_arguments["untimed_steps"] == 5
    assert capsys.readouterr().err.strip().splitlines() == [
        "vae bench: --warmup-steps is deprecated; use --untimed-steps"
    ]
    assert main(["bench", "--warmup-steps", "5", "--untimed-steps", "6"]) == 2
    assert "--untimed-steps only" in capsys.readouterr().err


def test_cli_help_shows_only_the_new_flag(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "--untimed-steps" in text and "--warmup-steps" not in text


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--backends", "mxnet"]) == 2
    assert "mxnet" in capsys.readouterr().err
    assert main(["bench", "--modes", "torch/warp"]) == 2
    assert "torch/warp" in capsys.readouterr().err
    with pytest.raises(SystemExit) as parser_exit:  # refused by the parser's type
        main(["bench", "--repeats", "0"])
    assert parser_exit.value.code == 2
    assert "--repeats" in capsys.readouterr().err
    args = [
        "bench",
        "--device",
        "cpu",
        "--samples",
        "10",
        "--batch-size",
        "64",
        "--backends",
        "jax",
    ]
    assert main([*args, "--repeats", "1"]) == 2
    assert "batch size 64" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_cli_writes_json_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    modes = "jax/step,jax/epoch,torch/eager,reference/eager"
    code = main(
        [
            "bench",
            *("--samples", "256", "--repeats", "2", "--untimed-steps", "2"),
            *("--batch-size", "64,128", "--modes", modes),
            *("--json", str(out), "--plot", str(plot)),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "reference" in table and "x ref" in table and "GEMM-only ceiling, batch 64" in table
    result = json.loads(out.read_text())
    assert {(r["backend"], r["mode"], r["batch_size"]) for r in result["records"]} == {
        (b, m, bs)
        for b, m in [("jax", "step"), ("jax", "epoch"), ("torch", "eager"), ("reference", "eager")]
        for bs in (64, 128)
    }
    assert all(set(r) == RECORD_KEYS for r in result["records"])
    assert HOST_KEYS <= set(result["host"])
    assert VAEConfig.from_dict(result["host"]["config"]) == bench.default_config("mlp")
    assert plot.stat().st_size > 1000


# -- data_parallel.py, dp_worker.py and --devices ------------------------------------------------

# What a data-parallel record holds beyond a 1-device record's fields.
DP_ONLY_KEYS = {
    "devices",
    "per_device_batch",
    "single_device_mode",
    "single_device_samples_per_s",
    "efficiency",
    "interleaved",
    "launch",
    "processes",
    "threads_per_process",
    "host_cores",
    "last_epoch_mean_loss",
    "single_device_last_epoch_mean_loss",
}


def test_workload_devices_must_split_the_batch():
    w = tiny_workload()
    assert dataclasses.replace(w, devices=4).devices == 4
    with pytest.raises(ConfigError, match="batch size 16 does not split over 3 devices"):
        dataclasses.replace(w, devices=3)
    for bad in (0, True, 2.0):
        with pytest.raises(ConfigError, match="devices must be None or a positive integer"):
            dataclasses.replace(w, devices=bad)


@pytest.mark.parametrize(
    "backend, mode", [("jax", "step"), ("torch", "cudagraph"), ("reference", "eager")]
)
def test_modes_without_a_data_parallel_form_are_refused(backend, mode):
    w = dataclasses.replace(tiny_workload(), devices=2)
    with pytest.raises(ConfigError, match=f"{backend}/{mode} has no data-parallel form"):
        bench.make_contender(backend, mode, w)
    assert bench.DP_MODES == {"jax": ("epoch",), "torch": ("eager", "compile")}
    assert set(bench.DP_MODES["torch"]) <= set(bench.MODES["torch"])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_worker_times_a_saved_job_and_keeps_its_last_losses(backend, tmp_path):
    # devices=1 is Trainer's data-parallel code path on one device (JAX: a 1-device mesh; torch:
    # no process group needed), so the worker's timing runs here; the N-device runs are below.
    w = dataclasses.replace(tiny_workload(), devices=1)
    dp.save_job(dp.Job(backend, (bench.DP_MODES[backend][0],), w, 2, 1), tmp_path)
    job = dp.load_job(tmp_path)
    assert (job.backend, job.untimed_epochs, job.repeats, job.workload.devices) == (
        backend,
        2,
        1,
        1,
    )
    assert (job.workload.config, job.workload.train, job.workload.seed) == (TINY, w.train, 3)
    np.testing.assert_array_equal(job.workload.data, w.data)
    out = dp_worker.time_job(job)
    (mode,) = job.modes
    assert set(out["timings"][mode]) == {
        "times_s",
        "median_s",
        "first_epoch_s",
        "compile_s",
        "untimed_s",
        "spread",
    }
    assert len(out["timings"][mode]["times_s"]) == 1
    # Epochs 0 and 1 untimed, epoch 2 timed: its losses are the Trainer's third epoch.
    expected = trainer_losses(backend, w, epochs=3)[-w.steps :].mean()
    assert out["last_epoch_mean_loss"][mode] == pytest.approx(expected, rel=1e-12)


def test_jax_worker_writes_its_result(tmp_path):
    w = dataclasses.replace(tiny_workload(), devices=1)
    dp.save_job(dp.Job("jax", ("epoch",), w, 1, 2), tmp_path)
    assert dp_worker.main([str(tmp_path)]) == 0
    result = json.loads((tmp_path / dp.RESULT_FILE).read_text())
    assert set(result) == {"timings", "last_epoch_mean_loss", "jax_devices"}
    assert len(result["timings"]["epoch"]["times_s"]) == 2 and len(result["jax_devices"]) == 1


def test_launch_sets_the_device_count_and_the_threads(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    how = dp.launch("jax", 3, "cpu")
    assert how["env"]["XLA_FLAGS"] == (
        "--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count=3"
    )
    assert how["env"]["JAX_PLATFORMS"] == "cpu" and how["processes"] == 1
    assert how["threads_per_process"] is None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    how = dp.launch("torch", 2, "cpu")
    threads = max(1, usable_cores() // 2)
    assert how["env"]["OMP_NUM_THREADS"] == str(threads) == str(how["threads_per_process"])
    assert how["processes"] == 2 and "gloo" in how["launch"]
    assert f"OMP_NUM_THREADS={threads}" in how["launch"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice is kept
    assert dp.launch("torch", 2, "cpu")["threads_per_process"] == 3
    assert how["prefix"][1:3] == ["-m", "torch.distributed.run"]
    assert how["prefix"][how["prefix"].index("--nproc-per-node") + 1] == "2"


def test_format_table_states_efficiency_and_what_it_is_against():
    dp_rec = dict(
        _record("torch", "eager-dp2", 1500.0, 1.5),
        devices=2,
        per_device_batch=32,
        single_device_mode="eager",
        single_device_samples_per_s=1000.0,
        efficiency=0.75,
        interleaved=False,
        launch="torch.distributed.run --nproc-per-node 2 (gloo), OMP_NUM_THREADS=1",
        host_cores=2,
    )
    lines = bench.format_table(dict(RESULT, records=[*RESULT["records"], dp_rec])).splitlines()
    assert lines[4].split()[:5] == ["torch", "eager-dp2", "64", "1,500", "1.50"]
    (line,) = [x for x in lines if x.startswith("torch/eager-dp2")]
    assert "batch 64 (32 per device): efficiency 0.75 = 1,500 / (2 x 1,000 of torch/eager)" in line
    assert "OMP_NUM_THREADS=1; not interleaved with the 1-device rows" in line
    assert "the 2 devices share 2 CPU core(s): not a speed-up measurement" in line
    assert bench.format_table(RESULT).count("efficiency") == 0


def _bad_devices():
    cores = usable_cores()
    return [
        (["--devices", "1"], "at least 2"),
        (["--devices", "0"], "at least 2"),
        (["--devices", "-2"], "at least 2"),
        (["--devices", "2", "--backends", "reference"], "none of them is chosen"),
        (["--devices", "2", "--modes", "jax/step"], "none of them is chosen"),
        (
            ["--devices", "2", "--backends", "jax", "--batch-size", "64,63"],
            "batch size(s) [63] do not split over 2",
        ),
        (
            ["--devices", str(cores + 1), "--backends", "torch", "--batch-size", str(cores + 1)],
            f"{cores + 1} torch ranks on the CPU need a core each, and this process may use "
            f"{cores}",
        ),
    ]


@pytest.mark.parametrize("argv, message", _bad_devices())
def test_bad_devices_exit_2_before_any_work(argv, message, bench_arguments, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(vae_common.data, "load_dataset", no_data)
    assert main(["bench", "--dataset", "digits", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vae bench: error: ") and message in err
    assert not bench_arguments  # run_bench was never called


def test_run_bench_checks_devices_before_any_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(bench_run, "make_data", no_work)
    monkeypatch.setattr(bench_run, "make_contender", no_work)
    for devices, error in ((1, ConfigError), (2.0, ConfigError), (usable_cores() + 1, DeviceError)):
        with pytest.raises(error):
            bench.run_bench(("torch",), devices=devices, batch_sizes=(12,))


def test_cli_hands_devices_to_run_bench(bench_arguments):
    with pytest.raises(_Called):
        main(["bench", "--devices", "2", "--backends", "jax"])
    assert bench_arguments["devices"] == 2
    with pytest.raises(_Called):
        main(["bench"])
    assert bench_arguments["devices"] is None


def _check_dp_records(records, n, modes):
    single = {(r["backend"], r["mode"]): r for r in records if "devices" not in r}
    rows = [r for r in records if "devices" in r]
    assert [(r["backend"], r["mode"]) for r in rows] == [(b, f"{m}-dp{n}") for b, m in modes]
    for r in rows:
        base = single[r["backend"], r["single_device_mode"]]
        assert set(r) == set(base) | DP_ONLY_KEYS and not set(base) & DP_ONLY_KEYS
        assert r["devices"] == n and r["per_device_batch"] == r["batch_size"] // n
        assert r["single_device_samples_per_s"] == base["samples_per_s"]
        assert math.isfinite(r["efficiency"]) and r["efficiency"] > 0
        assert r["efficiency"] == pytest.approx(r["samples_per_s"] / (n * base["samples_per_s"]))
        assert r["samples_per_s"] == pytest.approx(r["samples_per_epoch"] / r["median_epoch_s"])
        assert (r["samples_per_epoch"], r["untimed_steps"]) == (
            base["samples_per_epoch"],
            base["untimed_steps"],
        )
        assert r["host_cores"] == usable_cores()
        # The N-device row trained the 1-device row's problem (float64: up to rounding).
        assert r["last_epoch_mean_loss"] == pytest.approx(
            r["single_device_last_epoch_mean_loss"], rel=1e-10
        )
    return {r["backend"]: r for r in rows}


@pytest.mark.slow
def test_bench_devices_2_records_for_both_backends(tmp_path, monkeypatch, capsys):
    # The host figures (matmul peak, GEMM ceiling) are tested above; skipped here for time.
    monkeypatch.setattr(bench_run, "matmul_peak_gflops", lambda *a: None)
    monkeypatch.setattr(bench_run, "gemm_ceiling", lambda *a, **k: None)
    monkeypatch.setattr(bench_run, "adam_floor_seconds", lambda *a, **k: None)
    out = tmp_path / "b.json"
    code = main(
        [
            "bench",
            *("--devices", "2", "--modes", "jax/epoch,torch/eager", "--dtype", "float64"),
            *("--samples", "64", "--batch-size", "16", "--repeats", "2", "--untimed-steps", "1"),
            *("--json", str(out)),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "jax/epoch-dp2, batch 16 (8 per device): efficiency" in captured.out
    assert "not interleaved with the 1-device rows" in captured.out
    assert "not interleaved with the rows above" in captured.err
    records = json.loads(out.read_text())["records"]
    rows = _check_dp_records(records, 2, [("jax", "epoch"), ("torch", "eager")])
    assert not rows["jax"]["interleaved"] and not rows["torch"]["interleaved"]
    assert rows["jax"]["launch"].endswith("--xla_force_host_platform_device_count=2")
    assert (rows["jax"]["processes"], rows["jax"]["threads_per_process"]) == (1, None)
    assert rows["torch"]["processes"] == 2
    assert rows["torch"]["threads_per_process"] == rank_threads(2)  # measured in rank 0
    assert "torch.distributed.run --nproc-per-node 2 (gloo)" in rows["torch"]["launch"]


_IN_PROCESS = """
import json, sys
from vae_common.config import VAEConfig
from vae_tools import bench
config = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
result = bench.run_bench(("jax",), config=config, samples=64, batch_sizes=(16,), repeats=2,
                         untimed_steps=1, modes={"jax": ["epoch"]}, dtype="float64", devices=2,
                         log=lambda m: None)
print(json.dumps(result["records"]))
"""


@pytest.mark.slow
def test_jax_rows_run_in_process_and_interleaved_where_jax_has_the_devices():
    # As on a host with N GPUs: this JAX has 2 (CPU) devices from the start.
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    done = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _check_dp_records(json.loads(done.stdout), 2, [("jax", "epoch")])
    assert rows["jax"]["interleaved"] and rows["jax"]["launch"] == "in this process"
