"""The parsers of ``vae train`` and ``vae eval``: every option's argparse default is None, so
``vae_tools.options`` can tell a flag the user gave from one left out.
"""

from __future__ import annotations

import argparse

from vae_common.constants import DEFAULT_HIDDEN
from vae_common.evaluation import IWAE_CHUNK
from vae_common.precision import PRECISIONS
from vae_common.streaming import DEFAULT_PREFETCH
from vae_tools import commands
from vae_tools.cli_args import DATASET_HELP, PRECISION_HELP, add_data_args
from vae_tools.cli_types import (
    int_list,
    iwae_samples,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    seed_int,
)
from vae_tools.options_defaults import EVAL_DEFAULTS, TRAIN_DEFAULTS, show_default


def _option(
    g: argparse._ActionsContainer,
    flag: str,
    default: object,
    help: str = "",
    shown: str | None = None,
    **kwargs: object,
) -> None:
    """An option of ``vae train``/``vae eval``: its argparse default is None, so a flag the user
    gave is told from one left out (``vae_tools.options``); its help shows the real default
    (``shown`` instead when given)."""
    text = shown if shown is not None else f"default: {show_default(default)}"
    g.add_argument(flag, default=None, help=f"{help} ({text})" if help else f"({text})", **kwargs)  # type: ignore[arg-type]


def _flag(g: argparse._ActionsContainer, flag: str, help: str) -> None:
    """A store_true option whose argparse default is None (given: True)."""
    g.add_argument(flag, action="store_true", default=None, help=help)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """``vae train``: every option defaults to None here and takes its value from the command
    line, ``--config``, the run being resumed or ``options.TRAIN_DEFAULTS``, in that order."""
    d = TRAIN_DEFAULTS
    p = sub.add_parser(
        "train",
        help="train a VAE with one backend",
        description="Train a VAE in --out. Flags override --config FILE (TOML or JSON, keys "
        "the long option names), which overrides what a --resume'd run recorded, which "
        "overrides the defaults shown. A --resume'd run refuses a model or training flag that "
        "differs from its own.",
    )
    p.add_argument("--config", metavar="FILE", help="options from a TOML or JSON file")
    p.add_argument("--backend", choices=("jax", "torch"), help="required (resume: the run's)")
    _option(p, "--dataset", d["dataset"], DATASET_HELP)
    add_data_args(p)
    _option(p, "--epochs", d["epochs"], "total epochs (resume: counted from 1)", type=positive_int)
    _option(p, "--batch-size", d["batch_size"], type=positive_int)
    _option(p, "--lr", d["lr"], "Adam learning rate", type=positive_float)
    _option(p, "--beta", d["beta"], "KL weight", type=nonnegative_float)
    _option(p, "--warmup-steps", d["warmup_steps"], "KL warm-up length", type=nonnegative_int)
    _option(p, "--free-bits", d["free_bits"], "nats per latent dimension", type=nonnegative_float)
    _option(
        p,
        "--binarize",
        d["binarize"],
        "static: once before training; dynamic: every batch afresh (held-out images: one "
        "seeded draw)",
        choices=("none", "static", "dynamic"),
    )
    _option(p, "--seed", d["seed"], type=seed_int)
    _option(p, "--dtype", d["dtype"], choices=("float32", "float64"))
    _option(p, "--precision", d["precision"], PRECISION_HELP, choices=PRECISIONS)
    _option(
        p,
        "--device",
        None,
        "torch: cpu|cuda|xpu|mps; jax: cpu|gpu",
        shown="default: the backend's choice",
    )
    _flag(
        p, "--compile", "torch: compile each training step (forward, backward, Adam) into one graph"
    )
    _flag(
        p,
        "--cuda-graph",
        "CUDA only: torch replays each training step (forward, backward, Adam) as one CUDA graph "
        "per batch shape, captured once; jax accepts it (XLA already uses CUDA graphs there). "
        "Not with --compile or several torch processes",
    )
    g = p.add_argument_group(
        "several devices (data parallelism: the same numbers as one device; not recorded)"
    )
    _option(
        g,
        "--devices",
        None,
        "train on N devices, every batch split over them. jax: N devices of this process (on "
        "the CPU, N forced host devices: vae train restarts itself with them), or of all "
        "processes with --num-processes; torch: N processes of this host, launched through "
        "torch.distributed.run (under torchrun: its world size)",
        shown="default: one device; jax with --num-processes: every device of every process",
        metavar="N",
        type=positive_int,
    )
    _option(
        g,
        "--coordinator",
        None,
        "jax, several hosts: HOST:PORT of process 0 (jax.distributed), or auto: JAX's "
        "environment (JAX_COORDINATOR_ADDRESS, Slurm, Open MPI, Kubernetes, Cloud TPU)",
        shown="default: $JAX_COORDINATOR_ADDRESS, else one process",
        metavar="HOST:PORT",
    )
    _option(
        g,
        "--num-processes",
        None,
        "jax, several hosts: the number of processes",
        shown="default: from the environment with --coordinator",
        metavar="N",
        type=positive_int,
    )
    _option(
        g,
        "--process-id",
        None,
        "jax, several hosts: this process's index, 0 on the coordinator's host (process 0 "
        "writes --out)",
        shown="default: from the environment with --coordinator",
        metavar="I",
        type=nonnegative_int,
    )
    g = p.add_argument_group(
        "training data in host memory (the same numbers as on the device; not recorded)"
    )
    _flag(
        g,
        "--stream",
        "keep the training images on the host and move each batch to the device(s) during the "
        "previous step, for datasets larger than the device's memory (default: all of them on "
        "the device once)",
    )
    _option(
        g,
        "--prefetch",
        None,
        "with --stream: batches moved ahead of the step; at most K + 1 are on the device",
        shown=f"default: {DEFAULT_PREFETCH}",
        metavar="K",
        type=nonnegative_int,
    )
    p.add_argument("--init", help="start from this checkpoint's weights and config")
    p.add_argument("--out", help="run directory (required)")
    _flag(p, "--resume", "continue the run in --out with its recorded settings")
    _flag(p, "--overwrite", "start a new run in --out although it holds a run or other files")
    _flag(p, "--quiet", "no progress on stderr")
    g = p.add_argument_group("evaluation protocol")
    _option(
        g,
        "--val-split",
        d["val_split"],
        "hold out N training examples (seeded) as the validation set: per-epoch val metrics, "
        "best.safetensors, early stopping",
        metavar="N",
        type=nonnegative_int,
    )
    _flag(
        g,
        "--drop-last",
        "drop the examples left after the epoch's full batches (default: one more, smaller step)",
    )
    _option(
        g,
        "--patience",
        d["patience"],
        "stop after K epochs without a lower validation -ELBO (0: never; needs --val-split)",
        metavar="K",
        type=nonnegative_int,
    )
    _flag(
        g,
        "--test-every-epoch",
        "evaluate the test set after every epoch too (default: only at the end)",
    )
    g = p.add_argument_group("logging")
    _option(
        g,
        "--tensorboard",
        d["tensorboard"],
        "write TensorBoard event files to DIR (default DIR: OUT/tb); needs the tensorboard extra",
        shown="default: off",
        nargs="?",
        const="",
        metavar="DIR",
    )
    _option(
        g,
        "--log-every",
        d["log_every"],
        "TensorBoard: the training loss of every N-th step",
        metavar="N",
        type=positive_int,
    )
    g = p.add_argument_group("model (ignored when --init or the resumed run gives the config)")
    _option(g, "--arch", d["arch"], choices=("mlp", "conv"))
    _option(
        g,
        "--hidden",
        None,
        "hidden widths, e.g. 400 or 512,256",
        shown="default: "
        + ", ".join(f"{show_default(v)} for {k}" for k, v in DEFAULT_HIDDEN.items()),
        type=int_list,
    )
    _option(g, "--latent-dim", d["latent_dim"], type=positive_int)
    _option(g, "--likelihood", d["likelihood"], choices=("bernoulli", "gaussian"))
    _option(g, "--conv-channels", d["conv_channels"], "conv arch only", type=int_list)
    p.set_defaults(func=commands.cmd_train, parser=p)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """``vae eval``: the dataset, binarization, seed, dtype and backend default to what the
    checkpoint records."""
    d = EVAL_DEFAULTS
    p = sub.add_parser(
        "eval",
        help="test-set -ELBO and IWAE estimate of a checkpoint",
        description="Evaluate a checkpoint on the test set as the run that wrote it did: the "
        "dataset, binarization (the same seeded draw), seed and dtype it records, unless a "
        "flag (or --config FILE) says otherwise.",
    )
    p.add_argument("--config", metavar="FILE", help="options from a TOML or JSON file")
    p.add_argument("--checkpoint", help="a checkpoint file, or a run directory (its checkpoint)")
    p.add_argument(
        "--backend", choices=("jax", "torch"), help="(default: the backend that trained it)"
    )
    _option(p, "--dataset", None, DATASET_HELP, shown="default: the checkpoint's")
    add_data_args(p)
    _option(
        p,
        "--binarize",
        None,
        "binarize the test images: dynamic draws them once, seeded by the checkpoint's seed",
        shown="default: the checkpoint's, else none",
        choices=("none", "static", "dynamic"),
    )
    _option(
        p,
        "--iwae-k",
        d["iwae_k"],
        f"importance samples K of the IWAE bound: 0 (no IWAE) or 2 to {IWAE_CHUNK}",
        type=iwae_samples,
    )
    _option(
        p,
        "--seed",
        None,
        "seed of the shared evaluation noise",
        shown="default: the checkpoint's, else 0",
        type=seed_int,
    )
    _option(
        p,
        "--dtype",
        None,
        shown="default: the checkpoint's weights'",
        choices=("float32", "float64"),
    )
    _option(p, "--device", None, shown="default: the backend's choice")
    _option(p, "--batch-size", d["batch_size"], type=positive_int)
    _flag(p, "--json", "print one JSON object")
    p.set_defaults(func=commands.cmd_eval, parser=p)
