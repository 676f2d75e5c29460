"""What a run directory remembers of the ``vae train`` options it was started with (its train
state and ``run.json``), and which of a resume's options differ from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vae_common.checkpoint import load_tensors
from vae_common.config import VAEConfig
from vae_common.errors import CheckpointError, ConfigError
from vae_common.training import TrainConfig
from vae_tools.options_defaults import RESUME_FIXED, TRAIN_DEFAULTS, option_name, show_default


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
