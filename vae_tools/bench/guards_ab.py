"""An interleaved A/B of the compiled torch step's guard evaluation, in one process:
``make_compiled_step(skip_guards=False)`` (torch.compile's guards checked at every call) against
``skip_guards=True`` (the default: one graph per call key, its guards skipped after its guarded
calls). Both start from the same canonical weights on the same batch and noise.

``python -m vae_tools.bench.guards_ab [--steps S] [--rounds R] [--batch-size B]``: after
``--untimed`` steps of each, R rounds each time S steps of both variants, call by call, the
first of the two alternating from round to round (a slow spell of the host hits both alike);
prints, for each, the median over rounds of the rounds' median ms/step, their ratio, and the
median over rounds of the per-round difference.
Set ``OMP_NUM_THREADS`` for the thread count. The default model is the MLP 784-400-20, float32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vae_common.config import VAEConfig
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig


def make_variant(config: VAEConfig, skip_guards: bool, dtype: str = "float32") -> Any:
    """A compiled step of a fresh model and Adam (canonical weights of seed 0)."""
    from vae_torch.convert import from_canonical
    from vae_torch.model import build_model
    from vae_torch.train import make_compiled_step, make_optimizer

    model = build_model(config, dtype)
    from_canonical(model, init_canonical(config, seed=0, dtype=dtype))
    return make_compiled_step(model, make_optimizer(model, TrainConfig()), skip_guards=skip_guards)


def interleaved(
    variants: Sequence[Callable[[], None]], steps: int, rounds: int
) -> list[list[float]]:
    """Per variant, the ms/step of each round: round r makes ``steps`` calls of every variant,
    in the given order for even r and reversed for odd r, each call timed on its own; a round's
    figure is the median of its calls (on a shared host a call now and then waits ~100 ms for a
    descheduled thread, which would swamp a mean)."""
    times: list[list[float]] = [[] for _ in variants]
    for r in range(rounds):
        order = list(range(len(variants)))
        for i in order if r % 2 == 0 else order[::-1]:
            calls = []
            for _ in range(steps):
                start = time.perf_counter()
                variants[i]()
                calls.append((time.perf_counter() - start) * 1e3)
            times[i].append(statistics.median(calls))
    return times


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m vae_tools.bench.guards_ab", description=__doc__)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--untimed", type=int, default=20, help="steps of each before timing")
    p.add_argument("--tiny", action="store_true", help="an 8x8 MLP 64-16-2 instead")
    args = p.parse_args(argv)
    import torch

    torch.set_flush_denormal(True)  # as the Trainer trains on the CPU
    config = (
        VAEConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2) if args.tiny else VAEConfig()
    )
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.random((args.batch_size,) + config.input_shape, dtype=np.float32))
    eps = torch.as_tensor(rng.standard_normal((args.batch_size, config.latent_dim), np.float32))
    steps = [make_variant(config, skip) for skip in (False, True)]
    calls = [lambda s=s: s(x, eps, 1.0) for s in steps]
    for _ in range(args.untimed):
        for call in calls:
            call()
    guarded, skipped = interleaved(calls, args.steps, args.rounds)
    a, b = statistics.median(guarded), statistics.median(skipped)
    gain = statistics.median(g - s for g, s in zip(guarded, skipped, strict=True)) * 1e3
    widths = "-".join(str(w) for w in (int(np.prod(config.input_shape)), *config.hidden))
    threads = torch.get_num_threads()
    line = (
        f"MLP {widths}-{config.latent_dim} float32 batch {args.batch_size}, {threads} threads, "
        f"{args.rounds} rounds of {args.steps} steps: guarded {a:.3f} ms/step, guards "
        f"skipped {b:.3f} ms/step (x{b / a:.3f}; median per-round gain {gain:.1f} us/step)"
    )
    print(line)
    return line


if __name__ == "__main__":
    main()
