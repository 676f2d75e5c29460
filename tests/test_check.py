"""``vae check``: the report's schema, what it skips and why, and its exit statuses.

One real run on the CPU at the ``--quick`` sizes (tiny 8x8 models, a 64-sample benchmark) is
shared by the schema tests, with ``torch.compile``'s C++ compiler reported missing (which also
keeps the run short). The exit-status tests replace the slow parts (parity, trajectory,
benchmark) with stand-ins, so they run in a second.
"""

from __future__ import annotations

import json
import math

import pytest

from vae_common.errors import DeviceError
from vae_tools import check, cli

CHECK_KEYS = {"name", "passed", "skipped", "figure", "tolerance", "reason"}
# Keys of a ``vae bench --json`` record (tests/test_bench.py checks the whole set).
BENCH_RECORD_KEYS = {
    "backend",
    "mode",
    "device",
    "dtype",
    "precision",
    "precision_note",
    "batch_size",
    "samples_per_s",
    "compile_s",
    "spread",
    "ratio_to_reference",
}
CHECKS = [
    "bench/reference/eager",
    "bench/jax/step",
    "bench/jax/epoch",
    "bench/torch/eager",
    "bench/torch/compile",
    "bench/torch/cudagraph",
    "parity/mlp/float64",
    "parity/mlp/float32",
    "parity/mlp/bf16",
    "parity/conv/float64",
    "parity/conv/float32",
    "trajectory/mlp/float64",
]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """``vae check --device cpu --quick --json FILE`` with no C++ compiler: (status, report,
    stdout)."""
    from vae_torch import _compile

    path = tmp_path_factory.mktemp("check") / "cpu.json"
    with pytest.MonkeyPatch.context() as mp, _capture() as out:
        mp.setattr(_compile, "cpu_compiler", lambda: None)
        status = cli.main(["check", "--device", "cpu", "--quick", "--json", str(path)])
    return status, json.loads(path.read_text()), out.text


class _capture:
    """stdout of the block (the module-scoped fixture cannot use ``capsys``)."""

    def __enter__(self) -> _capture:
        import contextlib
        import io

        self._buf = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._buf)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._redirect.__exit__(*exc)
        self.text = self._buf.getvalue()


def test_quick_check_on_the_cpu_passes_and_writes_the_schema(quick_report):
    status, report, _ = quick_report
    assert status == 0 and report["passed"] is True and report["failed"] == []
    assert report["format"] == check.REPORT_FORMAT
    assert {"device", "versions", "checks", "bench", "precision", "settings"} <= set(report)
    assert [c["name"] for c in report["checks"]] == CHECKS
    for c in report["checks"]:
        assert CHECK_KEYS <= set(c), c["name"]
        assert isinstance(c["passed"], bool) and isinstance(c["skipped"], bool)
        assert not (c["passed"] and c["skipped"])
        if not c["skipped"]:
            assert c["passed"], c
            assert isinstance(c["figure"], float) and math.isfinite(c["figure"])
    for c in report["checks"]:
        if c["name"].startswith(("parity/", "trajectory/")):
            assert 0 <= c["figure"] <= c["tolerance"], c
        elif not c["skipped"]:
            assert c["tolerance"] is None and c["figure"] > 0 and c["unit"] == "samples/s"
    dev = report["device"]
    assert (dev["requested"], dev["torch"], dev["jax_platform"], dev["jax_note"]) == (
        "cpu",
        "cpu",
        "cpu",
        None,
    )
    assert dev["name"] == check.cpu_model()
    versions = report["versions"]
    for name in ("python", "numpy", "jax", "jaxlib", "flax", "optax", "torch", "safetensors"):
        assert versions[name], name
    assert set(report["precision"]["torch"]) == {
        "cuda_matmul_allow_tf32",
        "cudnn_allow_tf32",
        "float32_matmul_precision",
    }
    assert report["settings"]["trajectory_steps"] == 3
    assert report["settings"]["mlp"]["input_shape"] == [1, 8, 8]


def test_quick_check_bench_records_are_the_bench_ones(quick_report):
    _, report, _ = quick_report
    timed = [c for c in report["checks"] if c["name"].startswith("bench/") and not c["skipped"]]
    assert len(report["bench"]) == len(timed) == 4
    for c, r in zip(timed, report["bench"], strict=True):
        assert BENCH_RECORD_KEYS <= set(r)
        assert c["name"] == f"bench/{r['backend']}/{r['mode']}"
        assert c["figure"] == r["samples_per_s"] and r["batch_size"] == 16
    assert report["bench_host"]["device"] == "cpu"


def test_quick_check_says_what_it_skipped_and_why(quick_report):
    _, report, out = quick_report
    by_name = {c["name"]: c for c in report["checks"]}
    assert report["skipped"] == ["bench/torch/compile", "bench/torch/cudagraph"]
    assert "C++ compiler" in by_name["bench/torch/compile"]["reason"]
    assert "CUDA" in by_name["bench/torch/cudagraph"]["reason"]
    for name in report["skipped"]:
        assert by_name[name]["figure"] is None and by_name[name]["passed"] is False
        assert f"{name}: {by_name[name]['reason']}" in out  # the table names it too
    assert "10 passed, 0 failed, 2 skipped" in out and out.rstrip().endswith("PASSED")


def test_absent_devices_exit_2_before_any_work(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    # Nothing may run before the device is refused.
    monkeypatch.setattr(check, "bench_checks", _must_not_run)
    for device in ("cuda", "xpu"):
        path = tmp_path / f"{device}.json"
        assert cli.main(["check", "--device", device, "--json", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"vae check: error: device {device!r} was requested" in err
        assert not path.exists()
    with pytest.raises(DeviceError):
        check.run_check("cuda")


def _must_not_run(*args, **kwargs):
    raise AssertionError("work started before the device was checked")


def fake_parity(fail=(), crash=()):
    """A stand-in for ``parity.check_parity``: passes at a fixed figure, except the
    (dtype, precision) pairs in ``fail`` (over the tolerance) and ``crash`` (raises)."""
    seen = []

    def check_parity(inp, dtype, device, precision):
        seen.append((inp.config.arch, dtype, precision, device))
        if (dtype, precision) in crash:
            raise RuntimeError("kernel not supported")
        figure = 1.0 if (dtype, precision) in fail else 1e-13
        return {"passed": figure < 1e-12, "max_rel_diff": figure, "tolerance": 1e-12}

    return check_parity, seen


def fake_bench(fail_modes=()):
    """A stand-in for ``bench.run_bench`` that records what it was asked for and returns a
    record per mode; it raises when any of ``fail_modes`` is among them."""
    calls = []

    def run_bench(backends, device, modes, **kwargs):
        calls.append({b: list(m) for b, m in modes.items()})
        for b, ms in modes.items():
            for m in ms:
                if (b, m) in fail_modes:
                    raise RuntimeError(f"{b}/{m} broke")
        records = [
            {"backend": b, "mode": m, "device": device, "samples_per_s": 1000.0}
            for b, ms in modes.items()
            for m in ms
        ]
        return {"records": records, "host": {"device": device}}

    return run_bench, calls


@pytest.fixture
def stand_ins(monkeypatch):
    """Parity, trajectory and benchmark replaced; returns a setter for the failures."""
    import vae_tools.bench
    import vae_tools.parity
    import vae_tools.trajectory

    def set_up(fail=(), crash=(), fail_modes=(), trajectory_passes=True):
        parity, seen = fake_parity(fail, crash)
        run_bench, calls = fake_bench(fail_modes)
        monkeypatch.setattr(vae_tools.parity, "check_parity", parity)
        monkeypatch.setattr(vae_tools.bench, "run_bench", run_bench)
        monkeypatch.setattr(
            vae_tools.trajectory,
            "check_trajectory",
            lambda config, **kw: {
                "passed": trajectory_passes,
                "max_rel_diff": 1e-15 if trajectory_passes else 1.0,
                "tolerance": 1e-9,
                "judged": "params, loss curve, final gradient",
                "steps": kw["steps"],
            },
        )
        return seen, calls

    return set_up


def test_a_failing_check_exits_1_and_is_named(stand_ins, tmp_path, capsys):
    seen, _ = stand_ins(fail=[("float32", "float32")])
    path = tmp_path / "r.json"
    assert cli.main(["check", "--quick", "--json", str(path)]) == cli.EXIT_FAILED
    report = json.loads(path.read_text())
    assert report["passed"] is False
    assert report["failed"] == ["parity/mlp/float32", "parity/conv/float32"]
    assert ("mlp", "float64", "float32", "cpu") in seen and (
        "mlp",
        "float32",
        "bf16",
        "cpu",
    ) in seen
    out = capsys.readouterr().out
    assert "FAILED" in out.splitlines()[-1]
    row = next(line for line in out.splitlines() if line.startswith("parity/mlp/float32"))
    assert "FAILED" in row and "1.00e+00" in row


def test_a_crashing_check_fails_with_its_reason(stand_ins, monkeypatch):
    stand_ins(crash=[("float32", "bf16")])
    report = check.run_check("cpu", quick=True, log=lambda m: None)
    c = next(c for c in report["checks"] if c["name"] == "parity/mlp/bf16")
    assert (c["passed"], c["skipped"]) == (False, False)
    assert c["reason"] == "RuntimeError: kernel not supported" and "Traceback" in c["traceback"]
    assert report["failed"] == ["parity/mlp/bf16"]


def test_a_failing_trajectory_fails_the_check(stand_ins):
    stand_ins(trajectory_passes=False)
    report = check.run_check("cpu", quick=True, log=lambda m: None)
    assert report["failed"] == ["trajectory/mlp/float64"]


def test_a_failing_bench_mode_is_found_by_running_each_alone(stand_ins):
    _, calls = stand_ins(fail_modes=[("torch", "eager")])
    report = check.run_check("cpu", quick=True, log=lambda m: None)
    by_name = {c["name"]: c for c in report["checks"]}
    assert report["failed"] == ["bench/torch/eager"]
    assert by_name["bench/torch/eager"]["reason"] == "RuntimeError: torch/eager broke"
    assert by_name["bench/jax/epoch"]["passed"] and by_name["bench/jax/epoch"]["figure"] == 1000.0
    # One interleaved run of every mode, then one run per mode.
    assert len(calls) == 1 + len(calls[0]["jax"]) + len(calls[0]["torch"]) + 1
    assert [r["mode"] for r in report["bench"] if r["backend"] == "torch"] == ["compile"]


def test_jax_without_a_gpu_backend_runs_on_the_cpu_and_says_so(stand_ins, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Mock GPU")
    _, calls = stand_ins()
    report = check.run_check("cuda", quick=True, log=lambda m: None)
    assert report["device"]["name"] == "Mock GPU" and report["device"]["jax_platform"] == "cpu"
    assert "jax[cuda]" in report["device"]["jax_note"]
    # The CUDA rows on the GPU, JAX's apart on the CPU.
    assert len(calls) == 2 and calls[1] == {"jax": ["step", "epoch"]}
    assert "jax" not in calls[0] and "cudagraph" in calls[0]["torch"]
    jax_rows = [c for c in report["checks"] if c["name"].startswith("bench/jax/")]
    assert all(c["device"] == "cpu" and "JAX has no cuda" in c["reason"] for c in jax_rows)
    parity_rows = [c for c in report["checks"] if c["name"].startswith("parity/")]
    assert all("JAX has no cuda" in c["reason"] for c in parity_rows)


def test_default_settings_fit_the_device():
    cpu, gpu = check.default_settings("cpu"), check.default_settings("cuda")
    assert cpu.mlp == gpu.mlp and cpu.mlp.hidden == (400,) and cpu.mlp.latent_dim == 20
    assert cpu.conv.arch == "conv" and cpu.batch_size == gpu.batch_size == 128
    assert cpu.trajectory_steps == gpu.trajectory_steps == 20
    assert cpu.bench_samples < gpu.bench_samples == 60000
    assert gpu.bench_untimed_steps == 900 and gpu.bench_repeats == 5
    assert check.default_settings("xpu") == gpu
    with pytest.raises(ValueError, match="device must be one of"):
        check.default_settings("tpu")
