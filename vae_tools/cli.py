"""The ``vae`` command: ``vae parity``, ``vae train``, ``vae eval``, ``vae bench``, ``vae check``.

Exit status: 0 success, 1 a check failed (parity over tolerance), 2 bad input (the message names
the problem; no stack trace).

This module holds ``main`` (the exit-status mapping) and the top-level parser; each sub-command's
parser is in ``cli_train`` (train, eval), ``cli_checks`` (parity, bench, check, demo) and
``cli_generate``, the argparse types in ``cli_types``, and what each command does in ``commands``.
"""

from __future__ import annotations

import argparse
import sys

from vae_common.errors import TrainingError, VAEError
from vae_tools import commands
from vae_tools._backends import missing_backend_error
from vae_tools.cli_args import (
    DATASET_HELP,
    PRECISION_HELP,
    add_data_args,
    add_model_args,
)
from vae_tools.cli_checks import (
    add_bench_parser,
    add_check_parser,
    add_demo_parser,
    add_parity_parser,
)
from vae_tools.cli_generate import add_generate_parser
from vae_tools.cli_train import add_eval_parser, add_train_parser
from vae_tools.cli_types import (
    MAX_SEED,
    int_list,
    interpolation_steps,
    iwae_samples,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    positive_int_list,
    resize_hw,
    seed_int,
)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def package_version() -> str:
    """The installed version of vae-twin (``importlib.metadata``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vae-twin")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    # The order `vae --help` lists them in.
    add_parity_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_bench_parser(sub)
    add_demo_parser(sub)
    add_generate_parser(sub)
    add_check_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The project's own errors, and only those, are reported as one line: a failed check as
    # exit 1, bad input as exit 2. Anything else is a bug and surfaces with its traceback.
    try:
        return args.func(args)
    except TrainingError as exc:
        print(f"vae {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except VAEError as exc:
        print(f"vae {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as exc:
        # A framework the command needs is not installed (`vae parity` needs both): one line
        # naming the extra. Any other missing module is a bug and keeps its traceback.
        error = missing_backend_error(exc)
        if error is None:
            raise
        print(f"vae {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"vae {args.command}: interrupted", file=sys.stderr)
        return 130


# The names this module held before its parsers and types moved out, importable from here still.
__all__ = [
    "DATASET_HELP",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "MAX_SEED",
    "PRECISION_HELP",
    "add_bench_parser",
    "add_check_parser",
    "add_data_args",
    "add_demo_parser",
    "add_eval_parser",
    "add_generate_parser",
    "add_model_args",
    "add_parity_parser",
    "add_train_parser",
    "build_parser",
    "commands",
    "int_list",
    "interpolation_steps",
    "iwae_samples",
    "main",
    "nonnegative_float",
    "nonnegative_int",
    "package_version",
    "positive_float",
    "positive_int",
    "positive_int_list",
    "resize_hw",
    "seed_int",
]


if __name__ == "__main__":
    from vae_tools.run_launch import exit_process

    exit_process(main())
