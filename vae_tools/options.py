"""The settings of ``vae train`` and ``vae eval``: defaults, config files, and what a run or a
checkpoint remembers.

Every option of these two commands has the argparse default None, so a flag the user gave can be
told from one left out. The effective value of an option is, by precedence:

1. the flag on the command line;
2. the config file (``--config FILE``: TOML or JSON, keys are long option names, with ``-`` or
   ``_``; a run's ``run.json`` works too, standing for the flags it recorded);
3. what the run (``vae train --resume``) or the checkpoint (``vae eval``) recorded;
4. the default shown by ``--help`` (``TRAIN_DEFAULTS``, ``EVAL_DEFAULTS``).

On ``--resume`` a model or training setting (``RESUME_FIXED``) given by a flag or the config
file must equal the run's: a differing one is refused, naming it, before any work. The others
(``--epochs``, ``--backend``, ``--device``, logging, early stopping...) may change.

This module merges them (``train_options``, ``eval_options``); the tables of defaults are in
``options_defaults``, the config file in ``options_file``, a run's record in ``options_recorded``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vae_common.errors import ResumeError, UsageError
from vae_tools.options_defaults import (
    CONFIG_SUFFIXES,
    EVAL_DEFAULTS,
    NOT_RECORDED,
    RESUME_FIXED,
    TRAIN_DEFAULTS,
    UNSET,
    option_name,
    show_default,
)
from vae_tools.options_file import load_config
from vae_tools.options_recorded import recorded_train_flags, resume_differences


def given(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """The options of ``defaults`` that the command line set (those not None)."""
    out = {}
    for k in defaults:
        value = getattr(args, k, None)
        if value is not None and not (k in UNSET and value == UNSET[k]):
            out[k] = value
    return out


def train_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The effective options of ``vae train`` (see the module docstring), ``{dest: value}``.

    Raises:
      UsageError: a bad config file, ``--out``/``--backend`` missing everywhere, or
        ``--prefetch`` without ``--stream``.
      ResumeError: ``--resume`` with a model or training option that differs from the run's.
      CheckpointError: the run's recorded settings cannot be read.
    """
    flags = given(args, TRAIN_DEFAULTS)
    config_path = getattr(args, "config", None)
    from_file = load_config(config_path, parser, TRAIN_DEFAULTS) if config_path else {}
    wanted = {**from_file, **flags}
    out = wanted.get("out")
    if out is None:
        raise UsageError("--out is required (on the command line or in --config)")
    recorded: dict[str, Any] = {}
    if wanted.get("resume"):
        if wanted.get("init"):
            raise UsageError("--init starts a new run from a checkpoint: drop it with --resume")
        if wanted.get("overwrite"):
            raise UsageError(
                "give --resume (continue the run) or --overwrite (start over), not both"
            )
        path = Path(out)
        if path.is_dir():
            recorded, has_state = recorded_train_flags(path)
            if has_state:
                differ = resume_differences(recorded, wanted)
                if differ:
                    raise ResumeError(
                        f"--resume refused: {'; '.join(differ)} in {out}. Drop the flag to "
                        "continue the run as it was started, or start over with --overwrite "
                        "(or another --out)"
                    )
    effective = {**TRAIN_DEFAULTS, **recorded, **wanted}
    if effective["backend"] is None:
        raise UsageError("--backend is required (jax or torch; on the command line or in --config)")
    if effective["prefetch"] is not None and not effective["stream"]:
        raise UsageError(
            f"--prefetch {effective['prefetch']} applies to streamed training data: give "
            "--stream too, or drop --prefetch"
        )
    return effective


def tensorboard_dir(effective: dict[str, Any]) -> str | None:
    """Where ``--tensorboard`` writes: its DIR, ``OUT/tb`` when given without one (recorded so,
    as an empty string, so that a run started from this one's flags logs into its own
    directory), or None."""
    value = effective.get("tensorboard")
    if value == "":
        from vae_tools.run_dir import TENSORBOARD_DIR

        return str(Path(effective["out"]) / TENSORBOARD_DIR)
    return None if value is None else str(value)


def recorded_flags_of(effective: dict[str, Any]) -> dict[str, Any]:
    """The options a run records in ``run.json`` (``settings.flags``): JSON values."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in effective.items()
        if k not in NOT_RECORDED
    }


def eval_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options of ``vae eval`` given on the command line or in ``--config`` (the rest come
    from the checkpoint, in ``vae_tools.run.evaluate_checkpoint``, or from ``EVAL_DEFAULTS``)."""
    config_path = getattr(args, "config", None)
    from_file = load_config(config_path, parser, EVAL_DEFAULTS) if config_path else {}
    effective = {**EVAL_DEFAULTS, **from_file, **given(args, EVAL_DEFAULTS)}
    if effective["checkpoint"] is None:
        raise UsageError("--checkpoint is required (a checkpoint file or a run directory)")
    return effective


# Public names that live in the modules above, importable from here as before the split.
__all__ = [
    "CONFIG_SUFFIXES",
    "EVAL_DEFAULTS",
    "NOT_RECORDED",
    "RESUME_FIXED",
    "TRAIN_DEFAULTS",
    "UNSET",
    "eval_options",
    "given",
    "load_config",
    "option_name",
    "recorded_flags_of",
    "recorded_train_flags",
    "resume_differences",
    "show_default",
    "tensorboard_dir",
    "train_options",
]
