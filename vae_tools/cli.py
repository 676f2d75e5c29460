"""The ``vae`` command: ``vae parity``, ``vae train``, ``vae eval``, ``vae bench``.

Exit status: 0 success, 1 a check failed (parity over tolerance), 2 bad input (the message names
the problem; no stack trace).
"""

from __future__ import annotations

import argparse
import json
import sys

from vae_common.checkpoint import CheckpointError
from vae_common.config import ConfigError, VAEConfig
from vae_common.data import DataError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A command-line value is invalid."""


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_model_args(p: argparse.ArgumentParser, input_shape: bool = True) -> None:
    g = p.add_argument_group("model (ignored when a checkpoint gives the config)")
    g.add_argument("--arch", choices=("mlp", "conv"), default="mlp")
    g.add_argument("--hidden", type=int_list, default=None, help="hidden widths, e.g. 400 or 512,256")
    g.add_argument("--latent-dim", type=int, default=20)
    g.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    g.add_argument("--conv-channels", type=int_list, default=(32, 64), help="conv arch only")
    if input_shape:
        g.add_argument("--input-shape", type=int_list, default=(1, 28, 28), help="C,H,W")


def config_from_args(args, input_shape) -> VAEConfig:
    hidden = args.hidden
    if hidden is None:
        hidden = (400,) if args.arch == "mlp" else (256,)
    return VAEConfig(
        input_shape=tuple(input_shape),
        hidden=hidden,
        latent_dim=args.latent_dim,
        likelihood=args.likelihood,
        arch=args.arch,
        conv_channels=args.conv_channels if args.arch == "conv" else (),
    )


def cmd_parity(args) -> int:
    from vae_common.checkpoint import load_checkpoint
    from vae_tools import parity

    if args.checkpoint:
        state, config, _ = load_checkpoint(args.checkpoint)
    else:
        state, config = None, config_from_args(args, args.input_shape)
    if args.steps:
        from vae_tools.trajectory import check_trajectory

        report = check_trajectory(
            config, steps=args.steps, dtype=args.dtype, seed=args.seed,
            batch_size=args.batch_size, lr=args.lr, beta=args.beta, state=state,
            device=args.device,
        )
    else:
        inp = parity.make_inputs(
            config, seed=args.seed, batch_size=args.batch_size, k=args.k, beta=args.beta,
            objective=args.objective, state=state,
        )
        report = parity.check_parity(inp, args.dtype, args.device)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(parity.format_table(report))
    return 0 if report["passed"] else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parity", help="prove both backends compute the same loss and gradients")
    add_model_args(p)
    p.add_argument("--checkpoint", help="use this checkpoint's config and weights")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--k", type=int, default=1, help="noise samples per example")
    p.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
    p.add_argument("--steps", type=int, default=0, help="compare N Adam steps instead of one gradient")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate for --steps")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, xpu, mps or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_parity)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bad_input = (ConfigError, CheckpointError, DataError, UsageError, ValueError, FileNotFoundError)
    try:
        from vae_torch.device import DeviceError  # noqa: PLC0415

        bad_input = bad_input + (DeviceError,)
    except ImportError:
        pass
    try:
        return args.func(args)
    except bad_input as exc:
        print(f"vae {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"vae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
