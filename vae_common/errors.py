"""The project's error hierarchy: one base class, a named child per kind of bad input.

Everything the library raises on purpose is a ``VAEError``. The CLI maps these, and only these,
to a one-line message: ``TrainingError`` (a check that ran and failed) to exit status 1, every
other ``VAEError`` (bad input) to exit status 2. Any other exception is a bug and surfaces with
its traceback.

The children also derive from the built-in exception a caller would expect (``ValueError`` for
bad values, ``RuntimeError`` for a device that cannot run), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class VAEError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(VAEError, ValueError):
    """A configuration value (model, training or run settings) is invalid."""


class ShapeError(VAEError, ValueError):
    """An input array has the wrong shape or dtype; the message names the array and both shapes."""


class CheckpointError(VAEError, ValueError):
    """A checkpoint or train-state file is missing, unreadable or does not match its config."""


class DataError(VAEError, ValueError):
    """A dataset cannot be loaded or its contents are not valid images."""


class DeviceError(VAEError, RuntimeError):
    """A device is unknown, unavailable, or cannot run the requested dtype or mode."""


class UsageError(VAEError, ValueError):
    """A command-line value or combination of values is invalid."""


class BackendUnavailableError(UsageError, ImportError):
    """A backend was asked for but its framework is not installed (the message names the extra
    to install); an ``ImportError`` too, so ``except ImportError`` keeps catching it."""


class ResumeError(ConfigError):
    """A run directory cannot be resumed with the given settings."""


class RunDirError(VAEError, OSError):
    """A run directory cannot be used: not a directory, not writable or full, locked by another
    run, or holding files that are not a run's (the message names the path or the files)."""


class TrainingError(VAEError, RuntimeError):
    """Training or a check ran and failed (a non-finite loss): exit status 1, not bad input."""


__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "ResumeError",
    "RunDirError",
    "ShapeError",
    "TrainingError",
    "UsageError",
    "VAEError",
]
