"""The argument groups several ``vae`` sub-commands share (data, model, the ``--help``
formatter) and what they describe: ``data_source`` and ``config_from_args`` read them back.
"""

from __future__ import annotations

import argparse
from typing import cast

from vae_common.config import VAEConfig
from vae_common.constants import DEFAULT_CONV_CHANNELS, DEFAULT_HIDDEN, DEFAULT_LATENT_DIM
from vae_common.data import COLORS, LAYOUTS, DataSource
from vae_common.spec import check_size
from vae_tools.cli_types import int_list, positive_int, resize_hw

PRECISION_HELP = (
    "training steps: float32, tf32 (TF32 products; NVIDIA GPUs only, float32 elsewhere) or bf16 "
    "(bfloat16 layers over float32 weights, Adam state and loss); needs --dtype float32"
)
DATASET_HELP = (
    "digits | mnist:DIR | fashion-mnist:DIR | kmnist:DIR | idx:DIR | npz:FILE | images:DIR"
)


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every default in ``--help``, except the empty ones (None, False, a required flag's),
    whose help text says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


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


def data_source(args: argparse.Namespace) -> DataSource:
    """The ``DataSource`` that ``--dataset``, ``--layout``, ``--resize`` and ``--color``
    describe (checked: ``DataError`` for a bad value)."""
    return DataSource(args.dataset, args.layout, args.resize, args.color)


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


def config_from_args(args: argparse.Namespace, input_shape: tuple[int, ...]) -> VAEConfig:
    """The model config the model flags describe, for images of ``input_shape`` (C, H, W).

    ``ConfigError`` when the model is too large to build (``vae_common.spec.check_size``, with
    the command's dtype and batch size), before anything is allocated.
    """
    hidden = DEFAULT_HIDDEN[args.arch] if args.hidden is None else args.hidden
    config = VAEConfig(
        # VAEConfig checks the length and names the field (input_shape) when it is not C, H, W.
        input_shape=cast(tuple[int, int, int], tuple(input_shape)),
        hidden=hidden,
        latent_dim=args.latent_dim,
        likelihood=args.likelihood,
        arch=args.arch,
        conv_channels=args.conv_channels if args.arch == "conv" else (),
    )
    check_size(config, args.dtype, args.batch_size, getattr(args, "k", 1))
    return config
