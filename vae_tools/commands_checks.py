"""What ``vae parity``, ``vae bench``, ``vae check`` and ``vae demo`` do, given their parsed
arguments; each returns the exit status (1: a check failed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vae_common.config import VAEConfig
from vae_common.constants import BENCH_UNTIMED_STEPS
from vae_common.errors import UsageError
from vae_common.spec import check_size
from vae_tools.cli_args import config_from_args, data_source

EXIT_FAILED = 1


def cmd_parity(args: argparse.Namespace) -> int:
    from vae_common.checkpoint import load_checkpoint
    from vae_tools import parity

    if args.checkpoint:
        state, config, _ = load_checkpoint(args.checkpoint)
        check_size(config, args.dtype, args.batch_size, args.k)
    else:
        state, config = None, config_from_args(args, args.input_shape)
    if args.data_parallel:
        return _parity_data_parallel(args, config, state)
    if args.steps:
        from vae_tools.trajectory import check_trajectory

        report = check_trajectory(
            config,
            steps=args.steps,
            dtype=args.dtype,
            seed=args.seed,
            batch_size=args.batch_size,
            lr=args.lr,
            beta=args.beta,
            state=state,
            device=args.device,
        )
    else:
        inp = parity.make_inputs(
            config,
            seed=args.seed,
            batch_size=args.batch_size,
            k=args.k,
            beta=args.beta,
            objective=args.objective,
            state=state,
        )
        report = parity.check_parity(inp, args.dtype, args.device, args.precision)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(parity.format_table(report))
    return 0 if report["passed"] else EXIT_FAILED


def _parity_data_parallel(args: argparse.Namespace, config: VAEConfig, state: Any) -> int:
    from vae_tools import parity_dp

    if args.objective != "elbo" or args.k != 1:
        raise UsageError("--data-parallel trains on the ELBO with one sample: drop --objective/--k")
    report = parity_dp.check_data_parallel(
        config,
        args.data_parallel,
        dtype=args.dtype,
        steps=args.steps or 10,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        beta=args.beta,
        state=state,
        device=args.device,
    )
    print(json.dumps(report, indent=2) if args.json else parity_dp.format_table(report))
    return 0 if report["passed"] else EXIT_FAILED


def cmd_bench(args: argparse.Namespace) -> int:
    from vae_tools import bench

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = [b for b in backends if b not in bench.MODES]
    if unknown:
        raise UsageError(f"unknown backends {unknown}; choose from {list(bench.MODES)}")
    modes: dict[str, list[str]] | None = None
    if args.modes:
        modes = {}
        for item in args.modes.split(","):
            backend, _, mode = item.strip().partition("/")
            if mode not in bench.MODES.get(backend, ()):
                raise UsageError(f"unknown mode {item!r}; e.g. jax/epoch, torch/compile")
            modes.setdefault(backend, []).append(mode)
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1 (5 or more for figures you report)")
    untimed_steps = args.untimed_steps
    if args.deprecated_warmup_steps is not None:
        # The old name clashed with `vae train --warmup-steps` (the KL warm-up).
        if untimed_steps is not None:
            raise UsageError("give --untimed-steps only (--warmup-steps is its deprecated name)")
        print("vae bench: --warmup-steps is deprecated; use --untimed-steps", file=sys.stderr)
        untimed_steps = args.deprecated_warmup_steps
    if untimed_steps is None:
        untimed_steps = BENCH_UNTIMED_STEPS
    if args.devices is not None:
        # Refused before the dataset is read or anything is timed.
        chosen = bench.choose(backends, modes, args.device)
        bench.check_devices(args.devices, chosen, args.device, args.batch_size)
    data, config = None, None
    if args.dataset:
        from vae_common.data import load_dataset

        ds = load_dataset(data_source(args))
        data = ds.train[: args.samples]
        config = bench.default_config(args.arch, ds.image_shape)
    # The synthetic data (--samples images) and the largest batch must fit in memory.
    check_size(
        config or bench.default_config(args.arch),
        args.dtype,
        max(args.batch_size),
        dataset=args.samples if data is None else len(data),
    )
    result = bench.run_bench(
        backends=backends,
        arch=args.arch,
        device=args.device,
        batch_sizes=args.batch_size,
        dtype=args.dtype,
        samples=args.samples,
        repeats=args.repeats,
        untimed_steps=untimed_steps,
        modes=modes,
        data=data,
        config=config,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        devices=args.devices,
        precision=args.precision,
    )
    print(bench.format_table(result))
    if args.json:
        bench.write_json(result, args.json)
    if args.plot:
        bench.save_plot(result, args.plot)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from vae_tools import check
    from vae_tools.bench import write_json

    report = check.run_check(
        args.device, quick=args.quick, log=lambda m: print(m, file=sys.stderr, flush=True)
    )
    if args.json:
        write_json(report, args.json)
    print(check.format_table(report))
    return 0 if report["passed"] else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from vae_tools.demo import run_demo

    report = run_demo(args.out, epochs=args.epochs, progress=not args.quiet)
    print(f"report: {report}")
    return 0
