"""The options of ``vae train`` and ``vae eval`` as tables: their defaults (what ``--help``
shows), which a resumed run must keep, which are never recorded, and how an option is named.
"""

from __future__ import annotations

from typing import Any

from vae_common.constants import DEFAULT_CONV_CHANNELS, DEFAULT_LATENT_DIM

TRAIN_DEFAULTS: dict[str, Any] = {
    "backend": None,
    "out": None,
    "dataset": "digits",
    "layout": "auto",
    "resize": None,
    "color": None,
    "epochs": 10,
    "batch_size": 128,
    "lr": 1e-3,
    "beta": 1.0,
    "warmup_steps": 0,
    "free_bits": 0.0,
    "binarize": "none",
    "seed": 0,
    "dtype": "float32",
    "precision": "float32",
    "device": None,
    "compile": False,
    "cuda_graph": False,
    "devices": None,
    "coordinator": None,
    "num_processes": None,
    "process_id": None,
    "stream": False,
    "prefetch": None,
    "init": None,
    "resume": False,
    "overwrite": False,
    "quiet": False,
    "val_split": 0,
    "drop_last": False,
    "patience": 0,
    "test_every_epoch": False,
    "tensorboard": None,
    "log_every": 1,
    "arch": "mlp",
    "hidden": None,
    "latent_dim": DEFAULT_LATENT_DIM,
    "likelihood": "bernoulli",
    "conv_channels": DEFAULT_CONV_CHANNELS,
}
EVAL_DEFAULTS: dict[str, Any] = {
    "checkpoint": None,
    "backend": None,
    "dataset": None,
    "binarize": None,
    "iwae_k": 0,
    "seed": None,
    "dtype": None,
    "device": None,
    "batch_size": 500,
    "json": False,
}
# What a resumed run must keep: a flag that sets one of these to another value is refused.
RESUME_FIXED = (
    "dataset",
    "layout",
    "resize",
    "color",
    "batch_size",
    "lr",
    "beta",
    "warmup_steps",
    "free_bits",
    "binarize",
    "seed",
    "dtype",
    "precision",
    "val_split",
    "drop_last",
    "arch",
    "hidden",
    "latent_dim",
    "likelihood",
    "conv_channels",
)
# Options that describe one invocation rather than the run: never recorded, never taken from it
# (the devices and processes a run trains on, and whether its training images stay on the host,
# may change on --resume: the numbers do not).
NOT_RECORDED = (
    "config",
    "resume",
    "overwrite",
    "quiet",
    "out",
    "init",
    "devices",
    "coordinator",
    "num_processes",
    "process_id",
    "stream",
    "prefetch",
)
CONFIG_SUFFIXES = (".toml", ".json")
# Options whose argparse default is this value rather than None (``--layout``, shared with
# other commands): that value counts as not given.
UNSET = {"layout": "auto"}


def option_name(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def show_default(value: Any) -> str:
    """A default as ``--help`` shows it (lists comma-separated, as they are typed)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)
