"""The ``vae`` command: ``vae parity``, ``vae train``, ``vae eval``, ``vae bench``, ``vae check``.

Exit status: 0 success, 1 a check failed (parity over tolerance), 2 bad input (the message names
the problem; no stack trace).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from vae_common.constants import (
    BENCH_UNTIMED_STEPS,
    DEFAULT_CONV_CHANNELS,
    DEFAULT_HIDDEN,
    DEFAULT_LATENT_DIM,
)
from vae_common.data import COLORS, LAYOUTS
from vae_common.errors import TrainingError, VAEError
from vae_common.evaluation import IWAE_CHUNK
from vae_common.precision import PRECISIONS
from vae_tools import commands, options
from vae_tools._backends import missing_backend_error
from vae_tools.parity import PARITY_PRECISIONS

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


# The largest seed every consumer takes (JAX keys are int64; numpy and torch take more).
MAX_SEED = 2**63 - 1


def _integer(text: str, what: str, lo: int, hi: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse ``type=``: a bad value exits with status 2, naming the flag)."""
    return _integer(text, "a positive integer", 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, "an integer >= 0", 0)


def seed_int(text: str) -> int:
    """A seed: an integer in [0, 2**63 - 1]."""
    return _integer(text, f"a seed in [0, {MAX_SEED}]", 0, MAX_SEED)


def iwae_samples(text: str) -> int:
    """Importance samples of the IWAE bound: 0 (no IWAE) or an integer in [2, IWAE_CHUNK]
    (``vae_common.evaluation.IWAE_CHUNK`` samples of one example are decoded at once)."""
    what = f"0 (no IWAE) or an integer in [2, {IWAE_CHUNK}]"
    value = _integer(text, what, 0, IWAE_CHUNK)
    if value == 1:
        raise argparse.ArgumentTypeError(
            f"expected {what}, got '1' (one sample is the ELBO, reported anyway)"
        )
    return value


def _real(text: str, what: str, ok: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _real(text, "a finite number > 0", lambda v: v > 0)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _real(text, "a finite number >= 0", lambda v: v >= 0)


def positive_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers, each >= 1."""
    values = int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def resize_hw(text: str) -> tuple[int, int]:
    """``H,W``: two positive integers, the size every image is resized to."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return values[0], values[1]


PRECISION_HELP = (
    "training steps: float32, tf32 (TF32 products; NVIDIA GPUs only, float32 elsewhere) or bf16 "
    "(bfloat16 layers over float32 weights, Adam state and loss); needs --dtype float32"
)
DATASET_HELP = (
    "digits | mnist:DIR | fashion-mnist:DIR | kmnist:DIR | idx:DIR | npz:FILE | images:DIR"
)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--layout``, ``--resize``, ``--color``: how ``--dataset`` is read
    (``vae_common.data.load_dataset``); an option the dataset's format does not take is bad
    input (exit status 2)."""
    g = p.add_argument_group("data (how --dataset is read)")
    g.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="npz:FILE only: the images' axes; auto takes a 4-D array only when exactly one of "
        "axes 1 and 3 holds 1, 3 or 4 channels (default: %(default)s)",
    )
    g.add_argument(
        "--resize",
        type=resize_hw,
        default=None,
        metavar="H,W",
        help="images:DIR only: resize every image to H x W (bilinear; default: the images must "
        "share one size)",
    )
    g.add_argument(
        "--color",
        choices=COLORS,
        default=None,
        help="images:DIR only: convert every image to RGB or grey (default: all must be one)",
    )


def add_model_args(p: argparse.ArgumentParser, input_shape: bool = True) -> None:
    g = p.add_argument_group("model (ignored when a checkpoint gives the config)")
    g.add_argument("--arch", choices=("mlp", "conv"), default="mlp")
    g.add_argument(
        "--hidden", type=int_list, default=None, help="hidden widths, e.g. 400 or 512,256"
    )
    g.add_argument("--latent-dim", type=positive_int, default=DEFAULT_LATENT_DIM)
    g.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    g.add_argument(
        "--conv-channels", type=int_list, default=DEFAULT_CONV_CHANNELS, help="conv arch only"
    )
    if input_shape:
        g.add_argument("--input-shape", type=int_list, default=(1, 28, 28), help="C,H,W")


def package_version() -> str:
    """The installed version of vae-twin (``importlib.metadata``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vae-twin")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


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
    text = shown if shown is not None else f"default: {options.show_default(default)}"
    g.add_argument(flag, default=None, help=f"{help} ({text})" if help else f"({text})", **kwargs)  # type: ignore[arg-type]


def _flag(g: argparse._ActionsContainer, flag: str, help: str) -> None:
    """A store_true option whose argparse default is None (given: True)."""
    g.add_argument(flag, action="store_true", default=None, help=help)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """``vae train``: every option defaults to None here and takes its value from the command
    line, ``--config``, the run being resumed or ``options.TRAIN_DEFAULTS``, in that order."""
    d = options.TRAIN_DEFAULTS
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
        + ", ".join(f"{options.show_default(v)} for {k}" for k, v in DEFAULT_HIDDEN.items()),
        type=int_list,
    )
    _option(g, "--latent-dim", d["latent_dim"], type=positive_int)
    _option(g, "--likelihood", d["likelihood"], choices=("bernoulli", "gaussian"))
    _option(g, "--conv-channels", d["conv_channels"], "conv arch only", type=int_list)
    p.set_defaults(func=commands.cmd_train, parser=p)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """``vae eval``: the dataset, binarization, seed, dtype and backend default to what the
    checkpoint records."""
    d = options.EVAL_DEFAULTS
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

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

    add_train_parser(sub)
    add_eval_parser(sub)

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
        type=int,
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

    p = sub.add_parser("demo", help="the main job: train on digits in both backends and report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=commands.cmd_demo)

    add_generate_parser(sub)
    add_check_parser(sub)
    return parser


def add_check_parser(sub: argparse._SubParsersAction) -> None:
    """``vae check``: parity, trajectory and a benchmark of every mode on one device."""
    p = sub.add_parser(
        "check",
        help="prove parity and time every training mode on this machine's device",
        description="On one device: the parity checks (MLP and conv; float64 where the device "
        "has it, float32 with TF32 off, bf16), a short training trajectory and a short "
        "benchmark of every training mode; one JSON report and a table. Says what it skipped "
        "and why. Exit status 1 when a check fails, 2 for a device this machine does not have.",
        formatter_class=_DefaultsShown,
    )
    p.add_argument("--device", choices=("cpu", "cuda", "xpu"), default="cpu", help="device")
    p.add_argument("--json", metavar="FILE", default=None, help="write the report here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny 8x8 models and a 64-sample benchmark: checks that everything runs (seconds)",
    )
    p.set_defaults(func=commands.cmd_check)


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """``vae generate samples|reconstruct|interpolate|encode``: files from a checkpoint."""
    fmt = _DefaultsShown
    p = sub.add_parser(
        "generate",
        help="prior samples, reconstructions, interpolations or latent means from a checkpoint",
        description="Generate from a checkpoint in either backend; the same files for the same "
        "seed in both. Files that exist already are refused unless --overwrite.",
        formatter_class=fmt,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="a checkpoint.safetensors")
    common.add_argument("--backend", choices=("jax", "torch"), required=True, help="backend")
    common.add_argument("--out", required=True, help="directory for the files (created)")
    common.add_argument(
        "--overwrite", action="store_true", help="replace files of the same names in --out"
    )
    common.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="dtype")
    common.add_argument("--device", default=None, help="the backend's device (default: its own)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--dataset",
        default=None,
        help=f"{DATASET_HELP} (default: the dataset the checkpoint records)",
    )
    add_data_args(data)
    data.add_argument("--split", choices=("test", "train"), default="test", help="dataset split")
    data.add_argument(
        "--images", default=None, help="a .npy file of images (N, C, H, W) instead of a dataset"
    )
    what = p.add_subparsers(dest="what", required=True)
    g = what.add_parser(
        "samples",
        parents=[common],
        formatter_class=fmt,
        help="decode z ~ N(0, I): samples.png, samples.npy (n, C, H, W), samples_z.npy (n, L)",
    )
    g.add_argument("--n", type=positive_int, default=64, help="number of samples")
    g.add_argument("--seed", type=seed_int, default=0, help="seed of the prior noise")
    g = what.add_parser(
        "reconstruct",
        parents=[common, data],
        formatter_class=fmt,
        help="decode the posterior means: reconstructions.png, reconstructions.npy",
    )
    g.add_argument("--n", type=positive_int, default=32, help="the first N images")
    g = what.add_parser(
        "interpolate",
        parents=[common, data],
        formatter_class=fmt,
        help="decode the line between two posterior means: interpolation.png, "
        "interpolation.npy (P, steps, C, H, W), interpolation_z.npy (P, steps, L)",
    )
    g.add_argument(
        "--pair",
        nargs=2,
        type=nonnegative_int,
        action="append",
        metavar=("A", "B"),
        help="indices of two images to interpolate between; repeat for more rows "
        "(default: 0 1, 2 3, 4 5, 6 7)",
    )
    g.add_argument(
        "--steps", type=interpolation_steps, default=10, help="images per pair, ends included"
    )
    g = what.add_parser(
        "encode",
        parents=[common, data],
        formatter_class=fmt,
        help="posterior means of a dataset: latent_means.npy (N, L), labels.npy (N,)",
    )
    g.add_argument("--n", type=positive_int, default=None, help="the first N images (default all)")
    g.add_argument("--batch-size", type=positive_int, default=500, help="images per call")
    p.set_defaults(func=commands.cmd_generate)


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every default in ``--help``, except the empty ones (None, False, a required flag's),
    whose help text says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def interpolation_steps(text: str) -> int:
    """Points on an interpolation line: an integer >= 2 (both ends)."""
    return _integer(text, "an integer >= 2 (both ends of the line)", 2)


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


if __name__ == "__main__":
    sys.exit(main())
