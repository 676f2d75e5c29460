"""Importing a backend by name, and the one-line error when its framework is not installed.

``pip install .[torch]`` installs PyTorch only; asking such an install for the JAX backend must
say which extra is missing instead of ending in a ``ModuleNotFoundError`` traceback. Every lazy
backend import of ``vae_tools`` goes through ``import_backend``; ``missing_backend_error`` turns
an ``ImportError`` raised elsewhere (a tool that needs both frameworks) into the same message.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vae_common.errors import BackendUnavailableError, UsageError

BACKENDS = ("jax", "torch")
# The package implementing each backend, and the top-level modules its extra installs: a
# missing one of these (and only these) means the extra is not installed.
PACKAGES = {"jax": "vae_jax", "torch": "vae_torch"}
FRAMEWORK_MODULES = {"jax": ("jax", "jaxlib", "flax", "optax"), "torch": ("torch",)}
DISTRIBUTION = "vae-twin"


def extra_hint(backend: str) -> str:
    """``the jax backend needs the 'jax' extra: pip install 'vae-twin[jax]'``."""
    return (
        f"the {backend} backend needs the {backend!r} extra: "
        f"pip install '{DISTRIBUTION}[{backend}]'"
    )


def missing_backend_error(
    exc: BaseException, backends: tuple[str, ...] = BACKENDS
) -> BackendUnavailableError | None:
    """The error naming the extra to install when ``exc`` is an ``ImportError`` of a module one
    of ``backends`` needs (``jax``, ``jaxlib``, ``flax``, ``optax``; ``torch``); None for any
    other exception (another missing module is a bug or a broken install, not a missing extra).
    """
    if not isinstance(exc, ImportError) or isinstance(exc, BackendUnavailableError):
        return None
    top = (exc.name or "").partition(".")[0]
    for backend in backends:
        if top in FRAMEWORK_MODULES[backend]:
            return BackendUnavailableError(
                f"{extra_hint(backend)} (the module {top!r} cannot be imported)"
            )
    return None


def import_backend(name: str) -> ModuleType:
    """The backend package ``vae_jax`` (``"jax"``) or ``vae_torch`` (``"torch"``), imported now.

    Raises:
      UsageError: ``name`` is not a backend.
      BackendUnavailableError: its framework is not installed (a ``UsageError`` and an
        ``ImportError``); the message names the extra, e.g. ``pip install 'vae-twin[jax]'``.
    """
    if name not in PACKAGES:
        raise UsageError(f"unknown backend {name!r}; use one of {BACKENDS}")
    try:
        return importlib.import_module(PACKAGES[name])
    except ImportError as exc:
        error = missing_backend_error(exc, (name,))
        if error is None:
            raise
        raise error from exc


__all__ = [
    "BACKENDS",
    "FRAMEWORK_MODULES",
    "PACKAGES",
    "extra_hint",
    "import_backend",
    "missing_backend_error",
]
