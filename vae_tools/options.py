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
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

from vae_common.checkpoint import load_tensors
from vae_common.config import VAEConfig
from vae_common.constants import DEFAULT_CONV_CHANNELS, DEFAULT_LATENT_DIM
from vae_common.errors import CheckpointError, ConfigError, ResumeError, UsageError
from vae_common.training import TrainConfig

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
# Options that describe one invocation rather than the run: never recorded, never taken from it.
NOT_RECORDED = ("config", "resume", "overwrite", "quiet", "out", "init")
CONFIG_SUFFIXES = (".toml", ".json")


def option_name(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def show_default(value: Any) -> str:
    """A default as ``--help`` shows it (lists comma-separated, as they are typed)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


# Options whose argparse default is this value rather than None (``--layout``, shared with
# other commands): that value counts as not given.
UNSET = {"layout": "auto"}


def given(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """The options of ``defaults`` that the command line set (those not None)."""
    out = {}
    for k in defaults:
        value = getattr(args, k, None)
        if value is not None and not (k in UNSET and value == UNSET[k]):
            out[k] = value
    return out


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"--config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path} cannot be read: {exc}") from None
    if path.suffix == ".toml":
        # tomllib is Python 3.11's; tomli is the same parser for Python 3.10.
        toml: Any = None
        for name in ("tomllib", "tomli"):
            try:
                toml = importlib.import_module(name)
                break
            except ModuleNotFoundError:
                continue
        if toml is None:
            raise UsageError(
                "TOML config files need Python 3.11 (tomllib) or the tomli package; write the "
                "config as JSON instead"
            )
        try:
            body: Any = toml.loads(text)
        except toml.TOMLDecodeError as exc:
            raise UsageError(f"--config {path} is not valid TOML: {exc}") from None
    elif path.suffix == ".json":
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UsageError(f"--config {path} is not valid JSON: {exc}") from None
    else:
        raise UsageError(
            f"--config {path}: name the file .toml or .json (its format), not {path.suffix!r}"
        )
    if not isinstance(body, dict):
        raise UsageError(f"--config {path} must hold a table of options, got {type(body).__name__}")
    if body.get("format") == "vae-twin-run/1":
        # A run's manifest: the flags that run was started with.
        flags = (body.get("settings") or {}).get("flags")
        if not isinstance(flags, dict):
            raise UsageError(f"--config {path} is a run manifest that records no flags")
        body = {k: v for k, v in flags.items() if k not in NOT_RECORDED}
    return body


def load_config(
    path: str | os.PathLike[str], parser: argparse.ArgumentParser, defaults: dict[str, Any]
) -> dict[str, Any]:
    """The options a config file sets, ``{dest: value}``, each converted and checked as its
    flag would be (the flag's type and choices), so a bad value is refused naming the file and
    the option.

    Raises:
      UsageError: the file is missing, unreadable, not TOML/JSON (by its suffix), not a table,
        or names an unknown option or a bad value.
    """
    path = Path(path)
    body = _read_config(path)
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    values: dict[str, Any] = {}
    for key, value in body.items():
        if value is None:
            continue  # JSON null: not set (as the option left out)
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None or dest not in defaults or dest == "config":
            known = ", ".join(sorted(k.replace("_", "-") for k in defaults if k != "config"))
            raise UsageError(f"--config {path}: unknown option {key!r} (options: {known})")
        values[dest] = _convert(path, key, action, value)
    return values


def _convert(path: Path, key: str, action: argparse.Action, value: Any) -> Any:
    where = f"--config {path}: {key}"
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false, got {value!r}")
        return value
    if action.nargs == "?" and value is True:
        return action.const
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        raise UsageError(f"{where}: expected a value like the flag's, got {value!r}")
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    converted: Any = text
    if callable(action.type):
        try:
            converted = action.type(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise UsageError(
            f"{where}: {converted!r} is not one of {', '.join(map(str, action.choices))}"
        )
    return converted


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def recorded_train_flags(out: Path) -> tuple[dict[str, Any], bool]:
    """What the run in ``out`` recorded, as ``{dest: value}`` of ``vae train``'s options, and
    whether a train state was found (the settings a resume must keep, ``RESUME_FIXED``, then
    come from it; the rest from ``run.json``'s recorded flags).

    Raises:
      CheckpointError: the train state or the manifest is damaged (naming the file).
    """
    from vae_tools.run_dir import STATE, read_manifest
    from vae_tools.run_state import LEGACY_SETTINGS

    flags: dict[str, Any] = {}
    manifest = read_manifest(out)
    settings = manifest.settings if manifest is not None else None
    if settings is not None and isinstance(settings.get("flags"), dict):
        flags.update({k: _tupled(v) for k, v in settings["flags"].items() if k in TRAIN_DEFAULTS})
    state = out / STATE
    if not state.is_file():
        return flags, False
    _, meta = load_tensors(state)
    try:
        config = VAEConfig.from_json(meta["config"])
        train = TrainConfig.from_json(meta["train"])
        run = {**LEGACY_SETTINGS, **json.loads(meta["settings"])}
    except (KeyError, ValueError, TypeError, ConfigError, RecursionError) as exc:
        raise CheckpointError(f"{state}: its stored settings cannot be read: {exc}") from None
    flags.update(
        {
            "arch": config.arch,
            "hidden": tuple(config.hidden),
            "latent_dim": config.latent_dim,
            "likelihood": config.likelihood,
            "lr": train.lr,
            "beta": train.beta,
            "warmup_steps": train.warmup_steps,
            "free_bits": train.free_bits,
            "binarize": "static"
            if run.get("static_binarize")
            else ("dynamic" if train.binarize == "dynamic" else "none"),
            "dataset": run.get("dataset"),
            "batch_size": run.get("batch_size"),
            "seed": run.get("seed"),
            "dtype": run.get("dtype"),
            "precision": run.get("precision"),
            "val_split": run.get("val_split"),
            "drop_last": run.get("drop_last"),
        }
    )
    if config.arch == "conv":
        flags["conv_channels"] = tuple(config.conv_channels)
    if "backend" not in flags and meta.get("backend"):
        flags["backend"] = meta["backend"]
    return flags, True


def resume_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The options of ``RESUME_FIXED`` in ``wanted`` whose value differs from ``recorded``'s,
    each as ``--flag VALUE (the run has VALUE)``."""
    out = []
    for dest in RESUME_FIXED:
        if dest in wanted and dest in recorded and _tupled(wanted[dest]) != recorded[dest]:
            out.append(
                f"{option_name(dest)} {show_default(wanted[dest])} (the run has "
                f"{show_default(recorded[dest])})"
            )
    return out


def train_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The effective options of ``vae train`` (see the module docstring), ``{dest: value}``.

    Raises:
      UsageError: a bad config file, or ``--out``/``--backend`` missing everywhere.
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
