"""The parser of ``vae generate samples|reconstruct|interpolate|encode`` (files from a
checkpoint; ``vae_tools.commands_generate`` writes them).
"""

from __future__ import annotations

import argparse

from vae_tools import commands
from vae_tools.cli_args import DATASET_HELP, DefaultsShown, add_data_args
from vae_tools.cli_types import interpolation_steps, nonnegative_int, positive_int, seed_int


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """``vae generate samples|reconstruct|interpolate|encode``: files from a checkpoint."""
    fmt = DefaultsShown
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
