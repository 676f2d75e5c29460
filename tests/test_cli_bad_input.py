"""Bad numbers on the command line: every numeric flag of every sub-command is refused by the
parser (exit status 2, the flag named on stderr, no traceback), and a model or batch too large
for memory is refused before anything is allocated. In-process: ``vae_tools.cli.main``."""

from __future__ import annotations

import numpy as np
import pytest

from vae_common import spec
from vae_common.config import VAEConfig
from vae_common.errors import ConfigError
from vae_common.evaluation import IWAE_CHUNK, evaluate_batches
from vae_tools import cli, options

SMALL = ["--input-shape", "1,4,3", "--hidden", "5", "--latent-dim", "2"]

# (sub-command and its required flags, the bad flag, its value, what the parser expected)
BAD_FLAGS = [
    (["parity"], "--latent-dim", "0", "a positive integer"),
    (["parity"], "--seed", "-1", "a seed in [0, 9223372036854775807]"),
    (["parity"], "--batch-size", "0", "a positive integer"),
    (["parity"], "--beta", "nan", "a finite number >= 0"),
    (["parity"], "--beta", "-0.5", "a finite number >= 0"),
    (["parity"], "--k", "0", "a positive integer"),
    (["parity"], "--k", "two", "a positive integer"),
    (["parity"], "--steps", "-1", "an integer >= 0"),
    (["parity"], "--lr", "0", "a finite number > 0"),
    (["parity"], "--data-parallel", "-2", "an integer >= 0"),
    (["train", "--backend", "jax", "--out", "unused"], "--epochs", "0", "a positive integer"),
    (["train", "--backend", "jax", "--out", "unused"], "--batch-size", "-1", "a positive integer"),
    (["train", "--backend", "jax", "--out", "unused"], "--lr", "inf", "a finite number > 0"),
    (["train", "--backend", "jax", "--out", "unused"], "--beta", "-1", "a finite number >= 0"),
    (["train", "--backend", "jax", "--out", "unused"], "--warmup-steps", "-1", "an integer >= 0"),
    (["train", "--backend", "jax", "--out", "unused"], "--free-bits", "nan", "a finite number"),
    (["train", "--backend", "jax", "--out", "unused"], "--seed", str(2**64), "a seed in [0,"),
    (["train", "--backend", "jax", "--out", "unused"], "--latent-dim", "-3", "a positive integer"),
    (["train", "--backend", "jax", "--out", "unused"], "--val-split", "-1", "an integer >= 0"),
    (["train", "--backend", "jax", "--out", "unused"], "--patience", "-2", "an integer >= 0"),
    (["train", "--backend", "jax", "--out", "unused"], "--log-every", "0", "a positive integer"),
    (["train", "--backend", "torch", "--out", "unused"], "--devices", "0", "a positive integer"),
    (["train", "--backend", "jax", "--out", "unused"], "--num-processes", "0", "a positive"),
    (["train", "--backend", "jax", "--out", "unused"], "--process-id", "-1", "an integer >= 0"),
    (["train", "--backend", "jax", "--out", "unused"], "--prefetch", "-1", "an integer >= 0"),
    (["eval", "--backend", "jax", "--checkpoint", "c"], "--iwae-k", "-5", "0 (no IWAE) or an"),
    (["eval", "--backend", "jax", "--checkpoint", "c"], "--iwae-k", "1", "one sample is the ELBO"),
    (
        ["eval", "--backend", "jax", "--checkpoint", "c"],
        "--iwae-k",
        str(IWAE_CHUNK + 1),
        f"an integer in [2, {IWAE_CHUNK}]",
    ),
    (["eval", "--backend", "jax", "--checkpoint", "c"], "--seed", "-1", "a seed"),
    (["eval", "--backend", "jax", "--checkpoint", "c"], "--batch-size", "0", "a positive integer"),
    (["bench"], "--batch-size", "0", "positive integers"),
    (["bench"], "--batch-size", "64,-1", "positive integers"),
    (["bench"], "--samples", "0", "a positive integer"),
    (["bench"], "--repeats", "0", "a positive integer"),
    (["bench"], "--untimed-steps", "-1", "an integer >= 0"),
    (["bench"], "--warmup-steps", "-1", "an integer >= 0"),
    (["demo"], "--epochs", "0", "a positive integer"),
]


def vae(capsys, *argv: str) -> tuple[int, str, str]:
    """``vae ARGV`` in this process: (exit status, stdout, stderr); a parser error is status 2."""
    capsys.readouterr()
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    "command, flag, value, expected",
    BAD_FLAGS,
    ids=[f"{c[0]}{f}={v}" for c, f, v, _ in BAD_FLAGS],
)
def test_bad_numeric_flags_are_refused_by_the_parser(capsys, command, flag, value, expected):
    status, out, err = vae(capsys, *command, f"{flag}={value}")
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"vae {command[0]}: error: argument {flag}: expected"), err
    assert expected in last and repr(value) in last, err
    assert "Traceback" not in err and out == ""


def test_every_numeric_flag_is_covered():
    # Each sub-command's int and float flags (by their argparse type) appear in BAD_FLAGS.
    covered = {(c[0], f) for c, f, _, _ in BAD_FLAGS}
    numeric = {
        cli.positive_int,
        cli.nonnegative_int,
        cli.seed_int,
        cli.iwae_samples,
        cli.positive_float,
        cli.nonnegative_float,
        cli.positive_int_list,
    }
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    found = set()
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.type not in (int, float), f"vae {name} {action.option_strings}"
            if action.type in numeric:
                found.add((name, action.option_strings[0]))
    assert found == covered


def test_good_edge_values_parse():
    parser = cli.build_parser()
    args = parser.parse_args(["eval", "--backend", "jax", "--checkpoint", "c", "--iwae-k", "2"])
    assert args.iwae_k == 2
    args = parser.parse_args(["parity", "--seed", str(2**63 - 1), "--beta", "0", "--steps", "0"])
    assert (args.seed, args.beta, args.steps) == (2**63 - 1, 0.0, 0)
    # Not given: None, so a flag is told from a default; the effective default is 0.
    args = parser.parse_args(["eval", "--backend", "jax", "--checkpoint", "c"])
    assert args.iwae_k is None and options.EVAL_DEFAULTS["iwae_k"] == 0


def assert_one_line_error(status, err, command, *fragments):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vae {command}: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_a_model_above_the_parameter_limit_is_refused_up_front(capsys, tmp_path):
    # 100 million latent dimensions: 120 billion parameters; refused from the config alone.
    status, out, err = vae(capsys, "parity", "--latent-dim", "100000000")
    assert_one_line_error(
        status, err, "parity", "120,200,628,784 parameters", "vae_common.spec.MAX_PARAMS"
    )
    assert out == ""
    run_dir = tmp_path / "run"
    status, _, err = vae(
        capsys, "train", "--backend", "torch", "--out", str(run_dir), "--latent-dim", "100000000"
    )
    assert_one_line_error(status, err, "train", "parameters, more than the limit")
    assert not (run_dir / "checkpoint.safetensors").exists()


@pytest.fixture
def one_gib(monkeypatch):
    """The machine reports 1 GiB of available memory."""
    monkeypatch.setattr(spec, "available_memory", lambda: 2**30)


def test_batches_too_large_for_memory_are_refused_up_front(capsys, one_gib):
    status, _, err = vae(capsys, "parity", *SMALL, "--batch-size", "100000000")
    assert_one_line_error(
        status, err, "parity", "batches of 100,000,000 x 1 samples", "1.0 GiB of memory available"
    )
    status, _, err = vae(capsys, "parity", *SMALL, "--k", "10000000", "--objective", "iwae")
    assert_one_line_error(status, err, "parity", "batches of 128 x 10000000 samples")
    status, _, err = vae(capsys, "bench", "--backends", "reference", "--samples", "1000000")
    assert_one_line_error(status, err, "bench", "1,000,000 images", "more than the 1.0 GiB")


def test_parity_k_zero_and_batch_size_zero_are_bad_input_not_a_failed_check(capsys):
    for flag in ("--k", "--batch-size"):
        status, out, err = vae(capsys, "parity", *SMALL, flag, "0")
        assert status == 2 and "FAILED" not in out, (out, err)


def test_num_params_counts_every_tensor_of_the_spec():
    for config in (
        VAEConfig(),
        VAEConfig(
            input_shape=(3, 8, 8), hidden=(7, 5), latent_dim=3, arch="conv", conv_channels=(4, 6)
        ),
    ):
        want = sum(a.size for a in spec.init_canonical(config).values())
        assert config.num_params() == spec.num_params(config) == want
    # 784-400-20 MLP: 784*400+400 + 2*(400*20+20) + 20*400+400 + 400*784+784.
    assert VAEConfig().num_params() == 652_824


def test_check_size_limits():
    config = VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)
    spec.check_size(config, "float64", batch_size=128, available=10**9)
    need = spec.estimated_bytes(config, "float64", batch_size=128)
    assert need == 8 * (
        spec.PARAM_COPIES * config.num_params()
        + spec.ACTIVATION_COPIES * 128 * spec.activations_per_example(config)
    )
    with pytest.raises(ConfigError, match="need about"):
        spec.check_size(config, "float64", batch_size=128, available=need - 1)
    spec.check_size(config, "float64", batch_size=128, available=need)
    huge = config.replace(hidden=(100_000, 100_000))
    assert huge.num_params() == 2 * 100_000**2 + 138 * 100_000 + 68  # weights and biases
    with pytest.raises(ConfigError, match="20,013,800,068 parameters, more than the limit"):
        spec.check_size(huge, available=2**80)
    assert isinstance(spec.available_memory(), int)


@pytest.mark.parametrize("k", [-5, 1, IWAE_CHUNK + 1])
def test_evaluation_refuses_an_iwae_sample_count_that_is_not_a_bound(k):
    def never(*args):
        raise AssertionError("no batch may be evaluated")

    x = np.zeros((3, 1, 2, 2))
    with pytest.raises(ConfigError, match=rf"iwae_k must be 0 \(no IWAE\) or in \[2, .*got {k}"):
        evaluate_batches(never, never, x, 2, "float64", iwae_k=k)
