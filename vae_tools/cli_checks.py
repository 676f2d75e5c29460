"""The parsers of the sub-commands that check and measure: ``vae parity``, ``vae bench``,
``vae check`` and ``vae demo``.
"""

from __future__ import annotations

import argparse

from vae_common.constants import BENCH_UNTIMED_STEPS
from vae_common.precision import PRECISIONS
from vae_tools import commands
from vae_tools.cli_args import PRECISION_HELP, DefaultsShown, add_data_args, add_model_args
from vae_tools.cli_types import (
    device_count,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    positive_int_list,
    seed_int,
)
from vae_tools.parity import PARITY_PRECISIONS


def add_parity_parser(sub: argparse._SubParsersAction) -> None:
    """``vae parity``: one gradient, N Adam steps or a data-parallel run, in both backends."""
    p = sub.add_parser("parity", help="prove both backends compute the same loss and gradients")
    add_model_args(p)
    p.add_argument("--checkpoint", help="use this checkpoint's config and weights")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument(
        "--precision",
        choices=PARITY_PRECISIONS,
        default="float32",
        help="bf16: both backends' bfloat16 layers over float32 weights (--dtype float32), "
        "judged on the loss and per-example terms (vae_common.compare)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--beta", type=nonnegative_float, default=1.0)
    p.add_argument("--k", type=positive_int, default=1, help="noise samples per example")
    p.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
    p.add_argument(
        "--steps",
        type=nonnegative_int,
        default=0,
        help="compare N Adam steps instead of one gradient",
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate for --steps")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, xpu, mps or auto")
    p.add_argument(
        "--data-parallel",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="train --steps Adam steps (default 10) on N devices and on one, in each backend, "
        "and compare (also JAX vs torch)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=commands.cmd_parity)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """``vae bench``: training speed of every backend and mode (``vae_tools.bench``)."""
    p = sub.add_parser("bench", help="compare training speed across frameworks")
    p.add_argument(
        "--backends", default="jax,torch,reference", help="comma list of jax, torch, reference"
    )
    p.add_argument(
        "--modes",
        default=None,
        help="restrict to these, e.g. jax/epoch,torch/compile (default: all)",
    )
    p.add_argument("--device", choices=("cpu", "cuda", "xpu"), default="cpu")
    p.add_argument("--arch", choices=("mlp", "conv"), default="mlp")
    p.add_argument(
        "--batch-size", type=positive_int_list, default=(128,), help="one or a list: 64,128,256"
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help=f"{PRECISION_HELP} (the reference row: float32)",
    )
    p.add_argument("--samples", type=positive_int, default=60000, help="samples per epoch")
    p.add_argument(
        "--dataset",
        default=None,
        help="train on this dataset's images (default: synthetic MNIST-shaped data)",
    )
    add_data_args(p)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed epochs per contender")
    p.add_argument(
        "--untimed-steps",
        type=nonnegative_int,
        default=None,
        help=f"untimed steps per contender before timing, in whole epochs (default "
        f"{BENCH_UNTIMED_STEPS}: past PyTorch's denormal slowdown at ~800)",
    )
    p.add_argument(
        "--warmup-steps",
        dest="deprecated_warmup_steps",
        type=nonnegative_int,
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--devices",
        type=device_count,
        default=None,
        metavar="N",
        help="also time Trainer(devices=N) (N >= 2; global batch = --batch-size, split over N): "
        "rows jax/epoch-dpN, torch/eager-dpN, torch/compile-dpN for the chosen modes, with "
        "efficiency = samples/s / (N x the 1-device row); JAX without N devices runs on N "
        "forced CPU devices in a subprocess, torch as N ranks under torch.distributed.run "
        "(default: 1-device rows only)",
    )
    p.add_argument("--json", help="write the records and host info here")
    p.add_argument("--plot", help="write a bar chart here")
    p.set_defaults(func=commands.cmd_bench)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``vae demo``: train on digits in both backends and write the report."""
    p = sub.add_parser("demo", help="the main job: train on digits in both backends and report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=commands.cmd_demo)


def add_check_parser(sub: argparse._SubParsersAction) -> None:
    """``vae check``: parity, trajectory and a benchmark of every mode on one device."""
    p = sub.add_parser(
        "check",
        help="prove parity and time every training mode on this machine's device",
        description="On one device: the parity checks (MLP and conv; float64 where the device "
        "has it, float32 with TF32 off, bf16), a short training trajectory and a short "
        "benchmark of every training mode; one JSON report and a table. Says what it skipped "
        "and why. Exit status 1 when a check fails, 2 for a device this machine does not have.",
        formatter_class=DefaultsShown,
    )
    p.add_argument("--device", choices=("cpu", "cuda", "xpu"), default="cpu", help="device")
    p.add_argument("--json", metavar="FILE", default=None, help="write the report here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny 8x8 models and a 64-sample benchmark: checks that everything runs (seconds)",
    )
    p.set_defaults(func=commands.cmd_check)
