"""One check of ``vae check``: ``{"name", "passed", "skipped", "figure", "tolerance",
"reason"}``, and the guard that turns a crashing check into a failed one."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any


def make_check(
    name: str,
    passed: bool | None,
    figure: float | None = None,
    tolerance: float | None = None,
    reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A check: ``passed`` None means skipped (``reason`` then says why)."""
    return {
        "name": name,
        "passed": bool(passed) if passed is not None else False,
        "skipped": passed is None,
        "figure": figure,
        "tolerance": tolerance,
        "reason": reason,
        **extra,
    }


def guarded(name: str, fn: Callable[[], dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """``fn()``'s check, timed; an exception is a failed check that names it."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a check that crashes on new hardware is a finding, not a stop
        result = make_check(
            name,
            False,
            reason=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            **extra,
        )
    result["seconds"] = time.perf_counter() - t0
    return result


__all__ = ["guarded", "make_check"]
