"""Interleaved epoch timing and its summary statistics.

Each contender first runs its untimed epochs on its own (the first includes compilation); then
``repeats`` rounds each time one epoch of every contender in turn. A slow spell of a shared host
(other jobs, frequency changes) thus lands on all contenders alike instead of on whichever
happened to run then: the ratios between contenders are what this protects.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def timed(run_epoch: Callable[[int], Any], epoch: int) -> float:
    """Seconds of ``run_epoch(epoch)`` (every contender waits for its device before returning)."""
    t0 = time.perf_counter()
    run_epoch(epoch)
    return time.perf_counter() - t0


def summarize(untimed: Sequence[float], times: Sequence[float]) -> dict[str, Any]:
    """Statistics of one contender, all in seconds except ``spread``.

    Args:
      untimed: seconds of each untimed epoch, the first one first (at least one).
      times: seconds of each timed epoch (at least one).

    Returns:
      ``times_s`` (the timed epochs), ``median_s``, ``spread`` (``(max - min) / median``),
      ``first_epoch_s``, ``compile_s`` (the first epoch's excess over the median, at least 0)
      and ``untimed_s`` (the sum of the untimed epochs).
    """
    median = statistics.median(times)
    return {
        "times_s": list(times),
        "median_s": median,
        "first_epoch_s": untimed[0],
        "compile_s": max(0.0, untimed[0] - median),
        "untimed_s": sum(untimed),
        "spread": (max(times) - min(times)) / median,
    }


def measure_interleaved(
    contenders: Sequence[Callable[[int], Any]], untimed_epochs: int, repeats: int
) -> list[dict[str, Any]]:
    """Time ``contenders`` fairly; one ``summarize`` dict per contender, in their order.

    Contender c runs epochs ``0 .. untimed_epochs - 1`` untimed, all of them before the next
    contender starts; then round r runs epoch ``untimed_epochs + r`` of every contender in turn.
    """
    untimed = [[timed(fn, e) for e in range(untimed_epochs)] for fn in contenders]
    times: list[list[float]] = [[] for _ in contenders]
    for r in range(repeats):
        for i, fn in enumerate(contenders):
            times[i].append(timed(fn, untimed_epochs + r))
    return [summarize(u, t) for u, t in zip(untimed, times, strict=True)]
