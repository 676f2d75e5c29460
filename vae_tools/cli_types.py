"""The argparse ``type=`` helpers of the ``vae`` command: each turns a flag's text into a
checked value or raises ``argparse.ArgumentTypeError`` (argparse then exits with status 2,
naming the flag). ``vae_tools.options_file`` applies them to config-file values too.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from vae_common.evaluation import IWAE_CHUNK

# The largest seed every consumer takes (JAX keys are int64; numpy and torch take more).
MAX_SEED = 2**63 - 1


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _integer(text: str, what: str, lo: int, hi: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse ``type=``: a bad value exits with status 2, naming the flag)."""
    return _integer(text, "a positive integer", 1)


def device_count(text: str) -> int:
    """An integer number of devices; its range (at least 2, no more than the host has) is
    checked by the command, which knows the devices and the batch size."""
    return _integer(text, "an integer number of devices", -(2**31))


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, "an integer >= 0", 0)


def seed_int(text: str) -> int:
    """A seed: an integer in [0, 2**63 - 1]."""
    return _integer(text, f"a seed in [0, {MAX_SEED}]", 0, MAX_SEED)


def iwae_samples(text: str) -> int:
    """Importance samples of the IWAE bound: 0 (no IWAE) or an integer in [2, IWAE_CHUNK]
    (``vae_common.evaluation.IWAE_CHUNK`` samples of one example are decoded at once)."""
    what = f"0 (no IWAE) or an integer in [2, {IWAE_CHUNK}]"
    value = _integer(text, what, 0, IWAE_CHUNK)
    if value == 1:
        raise argparse.ArgumentTypeError(
            f"expected {what}, got '1' (one sample is the ELBO, reported anyway)"
        )
    return value


def interpolation_steps(text: str) -> int:
    """Points on an interpolation line: an integer >= 2 (both ends)."""
    return _integer(text, "an integer >= 2 (both ends of the line)", 2)


def _real(text: str, what: str, ok: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _real(text, "a finite number > 0", lambda v: v > 0)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _real(text, "a finite number >= 0", lambda v: v >= 0)


def positive_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers, each >= 1."""
    values = int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def resize_hw(text: str) -> tuple[int, int]:
    """``H,W``: two positive integers, the size every image is resized to."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return values[0], values[1]


__all__ = [
    "MAX_SEED",
    "int_list",
    "interpolation_steps",
    "iwae_samples",
    "nonnegative_float",
    "nonnegative_int",
    "positive_float",
    "positive_int",
    "positive_int_list",
    "resize_hw",
    "seed_int",
]
