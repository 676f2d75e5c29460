"""``--config FILE`` of ``vae train`` and ``vae eval``: a TOML or JSON table of options (or a
run's ``run.json``), each value converted and checked as its flag would be.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

from vae_common.errors import UsageError
from vae_tools.options_defaults import NOT_RECORDED


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
