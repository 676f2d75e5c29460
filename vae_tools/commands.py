"""What each ``vae`` sub-command does, given its parsed arguments (``vae_tools.cli`` builds the
parser and maps errors to exit statuses). Each returns the exit status; backends are imported
only by the commands that use them.

The parsers take their ``func`` from this module, so it is the one table of commands:
``commands_checks`` (parity, bench, check, demo), ``commands_train`` (train, eval) and
``commands_generate`` hold them.
"""

from __future__ import annotations

from vae_tools.cli_args import config_from_args, data_source
from vae_tools.commands_checks import (
    EXIT_FAILED,
    cmd_bench,
    cmd_check,
    cmd_demo,
    cmd_parity,
)
from vae_tools.commands_generate import DEFAULT_PAIRS, cmd_generate
from vae_tools.commands_train import cmd_eval, cmd_train

__all__ = [
    "DEFAULT_PAIRS",
    "EXIT_FAILED",
    "cmd_bench",
    "cmd_check",
    "cmd_demo",
    "cmd_eval",
    "cmd_generate",
    "cmd_parity",
    "cmd_train",
    "config_from_args",
    "data_source",
]
