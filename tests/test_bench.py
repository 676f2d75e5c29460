"""The benchmark runs and writes well-formed JSON on a tiny setting (no timing assertions)."""

import json

import pytest

from vae_common.config import VAEConfig
from vae_tools import bench
from vae_tools.cli import main

RECORD_KEYS = {
    "backend",
    "mode",
    "arch",
    "device",
    "dtype",
    "batch_size",
    "samples_per_s",
    "steps_per_s",
    "compile_s",
    "repeats",
    "spread",
}


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


@pytest.mark.slow
def test_bench_cli_writes_json_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    code = main(
        [
            "bench",
            "--samples",
            "256",
            "--repeats",
            "2",
            "--warmup-steps",
            "2",
            "--batch-size",
            "64,128",
            "--modes",
            "jax/step,jax/epoch,torch/eager,reference/eager",
            "--json",
            str(out),
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "reference" in table and "x ref" in table
    result = json.loads(out.read_text())
    records = result["records"]
    assert {(r["backend"], r["mode"], r["batch_size"]) for r in records} == {
        (b, m, bs)
        for b, m in [("jax", "step"), ("jax", "epoch"), ("torch", "eager"), ("reference", "eager")]
        for bs in (64, 128)
    }
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r["samples_per_s"] > 0 and r["steps_per_s"] > 0 and r["compile_s"] >= 0
        assert r["repeats"] == 2 and r["arch"] == "mlp" and r["dtype"] == "float32"
        assert r["samples_per_s"] == pytest.approx(r["steps_per_s"] * r["batch_size"])
        ref = next(
            x for x in records if x["backend"] == "reference" and x["batch_size"] == r["batch_size"]
        )
        assert r["ratio_to_reference"] == pytest.approx(r["samples_per_s"] / ref["samples_per_s"])
    host = result["host"]
    for key in (
        "torch",
        "jax",
        "torch_threads",
        "cpu_count",
        "float32_matmul_precision",
        "peak_gflops",
        "flops_per_sample",
        "gemm_ceiling_samples_per_s",
    ):
        assert key in host
    assert set(host["gemm_ceiling_samples_per_s"]) == {"64", "128"}
    assert "GEMM-only ceiling, batch 64" in table
    assert plot.stat().st_size > 1000


def test_timed_epochs_are_interleaved_after_each_warm_up():
    calls = []
    contenders = [lambda e, name=name: calls.append((name, e)) for name in "abc"]
    timings = bench.measure_interleaved(contenders, warmup_epochs=2, repeats=3)
    warm_up = [(n, e) for n in "abc" for e in (0, 1)]
    rounds = [(n, 2 + r) for r in range(3) for n in "abc"]
    assert calls == warm_up + rounds
    for t in timings:
        assert len(t["times_s"]) == 3 and t["median_s"] > 0 and t["compile_s"] >= 0
        assert t["spread"] == (max(t["times_s"]) - min(t["times_s"])) / t["median_s"]


def test_gemm_ceiling_is_for_mlps_and_positive():
    mlp = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    assert bench.gemm_ceiling(mlp, 32, "cpu", repeats=2) > 0
    conv = VAEConfig(
        input_shape=(1, 8, 8), hidden=(), latent_dim=2, arch="conv", conv_channels=(2,)
    )
    assert bench.gemm_ceiling(conv, 32, "cpu") is None


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--backends", "mxnet"]) == 2
    assert "mxnet" in capsys.readouterr().err
    assert main(["bench", "--modes", "torch/warp"]) == 2
    assert "torch/warp" in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                "--device",
                "cpu",
                "--samples",
                "10",
                "--batch-size",
                "64",
                "--backends",
                "jax",
                "--repeats",
                "1",
            ]
        )
        == 2
    )
    assert "batch size 64" in capsys.readouterr().err
