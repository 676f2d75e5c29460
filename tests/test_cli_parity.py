"""``vae parity``: the JSON report, checkpoints as input, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from vae_common.checkpoint import save_checkpoint
from vae_common.compare import TOLERANCES
from vae_common.config import VAEConfig
from vae_common.spec import init_canonical, param_spec
from vae_tools import parity
from vae_tools.cli import main

SMALL = VAEConfig(input_shape=(1, 4, 3), hidden=(5,), latent_dim=2)
SMALL_ARGS = ["--input-shape", "1,4,3", "--hidden", "5", "--latent-dim", "2", "--batch-size", "4"]


def run(capsys, *argv):
    code = main(["parity", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_json_report_for_the_default_model(capsys, dtype):
    code, out, err = run(capsys, "--json", "--dtype", dtype)
    report = json.loads(out)
    assert code == 0, err
    assert report["dtype"] == dtype
    assert set(report["loss"]) >= {"jax", "torch", "rel_diff"}
    assert report["loss"]["rel_diff"] <= TOLERANCES[dtype]
    assert list(report["grads"]) == [s.name for s in param_spec(VAEConfig())]
    assert len(report["grads"]) == 10
    for name, g in report["grads"].items():
        assert set(g) >= {"max_abs_diff", "max_rel_diff"}, name
        assert 0 <= g["max_rel_diff"] <= TOLERANCES[dtype], name
    assert report["max_rel_diff"] <= TOLERANCES[dtype]
    assert report["tolerance"] == TOLERANCES[dtype]
    assert report["passed"] is True


def test_checkpoint_weights_and_config_are_used(capsys, tmp_path):
    path = tmp_path / "small.safetensors"
    state = init_canonical(SMALL, seed=7)
    save_checkpoint(path, state, SMALL)
    # The model flags are ignored when a checkpoint gives the config.
    code, out, err = run(
        capsys, "--checkpoint", str(path), "--batch-size", "4", "--json", "--latent-dim", "9"
    )
    assert code == 0, err
    report = json.loads(out)
    assert list(report["grads"]) == [s.name for s in param_spec(SMALL)]
    assert report["passed"] is True
    want = parity.torch_side(parity.make_inputs(SMALL, batch_size=4, state=state), "float64")
    assert report["loss"]["torch"] == want["loss"]
    fresh = parity.torch_side(parity.make_inputs(SMALL, batch_size=4), "float64")
    assert report["loss"]["torch"] != fresh["loss"], "the checkpoint's weights were not used"


def test_text_table(capsys):
    code, out, err = run(
        capsys, *SMALL_ARGS, "--likelihood", "gaussian", "--k", "2", "--objective", "iwae"
    )
    assert code == 0, err
    assert "grad decoder.out.weight" in out
    assert out.strip().splitlines()[-1].endswith("PASSED")


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {err}"
    assert lines[0].startswith("vae parity: error:")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in err


def test_missing_checkpoint(capsys, tmp_path):
    missing = tmp_path / "none.safetensors"
    code, out, err = run(capsys, "--checkpoint", str(missing))
    assert_one_line_error(code, err, str(missing), "does not exist")
    assert out == ""


def test_corrupt_checkpoint(capsys, tmp_path):
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, init_canonical(SMALL), SMALL)
    path.write_bytes(path.read_bytes()[:-10])
    code, out, err = run(capsys, "--checkpoint", str(path))
    assert_one_line_error(code, err, str(path), "truncated")
    assert out == ""


def test_unknown_device(capsys):
    code, out, err = run(capsys, *SMALL_ARGS, "--device", "tpu")
    assert_one_line_error(code, err, "'tpu'")
    assert out == ""


def test_invalid_config_flags(capsys):
    code, _, err = run(capsys, "--input-shape", "1,4", "--latent-dim", "2")
    assert_one_line_error(code, err, "input_shape")


def test_iwae_needs_two_samples(capsys):
    code, _, err = run(capsys, *SMALL_ARGS, "--objective", "iwae")
    assert_one_line_error(code, err, "k >= 2")


def test_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["parity", "--dtype", "float16"])
    assert info.value.code == 2
    assert "float16" in capsys.readouterr().err
