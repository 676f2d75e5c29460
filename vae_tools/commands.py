"""What each ``vae`` sub-command does, given its parsed arguments (``vae_tools.cli`` builds the
parser and maps errors to exit statuses). Each returns the exit status; backends are imported
only by the commands that use them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, cast

from vae_common.config import VAEConfig
from vae_common.constants import BENCH_UNTIMED_STEPS, DEFAULT_HIDDEN
from vae_common.data import DataSource
from vae_common.errors import UsageError
from vae_common.spec import check_size

EXIT_FAILED = 1


def config_from_args(args: argparse.Namespace, input_shape: tuple[int, ...]) -> VAEConfig:
    """The model config the model flags describe, for images of ``input_shape`` (C, H, W).

    ``ConfigError`` when the model is too large to build (``vae_common.spec.check_size``, with
    the command's dtype and batch size), before anything is allocated.
    """
    hidden = DEFAULT_HIDDEN[args.arch] if args.hidden is None else args.hidden
    config = VAEConfig(
        # VAEConfig checks the length and names the field (input_shape) when it is not C, H, W.
        input_shape=cast(tuple[int, int, int], tuple(input_shape)),
        hidden=hidden,
        latent_dim=args.latent_dim,
        likelihood=args.likelihood,
        arch=args.arch,
        conv_channels=args.conv_channels if args.arch == "conv" else (),
    )
    check_size(config, args.dtype, args.batch_size, getattr(args, "k", 1))
    return config


def data_source(args: argparse.Namespace) -> DataSource:
    """The ``DataSource`` that ``--dataset``, ``--layout``, ``--resize`` and ``--color``
    describe (checked: ``DataError`` for a bad value)."""
    return DataSource(args.dataset, args.layout, args.resize, args.color)


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


def cmd_train(args: argparse.Namespace) -> int:
    from vae_common.checkpoint import load_checkpoint
    from vae_common.data import load_dataset
    from vae_common.training import TrainConfig
    from vae_tools import options, run

    # Flags, --config, the resumed run's record and the defaults, merged; a resume that would
    # change a model or training setting is refused here, naming the flag.
    opts = options.train_options(args, args.parser)
    eff = argparse.Namespace(**opts)
    # The run directory's refusals (a file, unwritable, locked, someone else's files) come
    # before the data is loaded; run.train makes them again under its lock.
    run.check_run_dir(eff.out, resume=eff.resume, overwrite=eff.overwrite)
    ds = load_dataset(data_source(eff))
    init_state = None
    if eff.init:
        init_state, config, _ = load_checkpoint(eff.init)
        if config.input_shape != ds.image_shape:
            raise UsageError(
                f"--init {eff.init} expects images of shape {config.input_shape}, dataset "
                f"{eff.dataset} has {ds.image_shape}"
            )
    else:
        config = config_from_args(eff, ds.image_shape)
    train = TrainConfig(
        lr=eff.lr,
        beta=eff.beta,
        warmup_steps=eff.warmup_steps,
        free_bits=eff.free_bits,
        binarize="dynamic" if eff.binarize == "dynamic" else "none",
    )
    settings = run.RunSettings(
        eff.dataset,
        eff.batch_size,
        eff.seed,
        eff.dtype,
        static_binarize=eff.binarize == "static",
        val_split=eff.val_split,
        drop_last=bool(eff.drop_last),
        precision=eff.precision,
    )
    metrics = run.train(
        eff.out,
        eff.backend,
        config,
        train,
        settings,
        eff.epochs,
        resume=bool(eff.resume),
        device=eff.device,
        compile=bool(eff.compile),
        init_state=init_state,
        dataset=ds,
        progress=not eff.quiet,
        overwrite=bool(eff.overwrite),
        patience=eff.patience,
        test_every_epoch=bool(eff.test_every_epoch),
        tensorboard=options.tensorboard_dir(opts),
        log_every=eff.log_every,
        flags=options.recorded_flags_of(opts),
    )
    results = run.test_results(eff.out) or {}
    last = metrics[-1] if metrics else None
    if last:
        line = f"epoch {last['epoch']}: train loss {last['train_loss']:.3f}"
        if "val_neg_elbo" in last:
            line += f", val -ELBO {last['val_neg_elbo']:.3f}"
        if "last" in results:
            line += f", test -ELBO {results['last']['neg_elbo']:.6f} nats"
        print(f"{line} ({eff.out}/checkpoint.safetensors)")
        best = results.get("best")
        if best:
            print(
                f"best epoch {best['epoch']}: val -ELBO {best['val_neg_elbo']:.3f}, test -ELBO "
                f"{best['neg_elbo']:.6f} nats ({eff.out}/best.safetensors)"
            )
        if results.get("stopped_early"):
            print(f"stopped early after epoch {last['epoch']} (--patience {eff.patience})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vae_common.checkpoint import load_checkpoint
    from vae_tools import options, run
    from vae_tools.run_dir import CHECKPOINT

    opts = options.eval_options(args, args.parser)
    path = Path(opts["checkpoint"])
    if path.is_dir():
        path = path / CHECKPOINT
    backend = opts["backend"]
    if backend is None:
        backend = load_checkpoint(path)[2].get("backend")
        if backend not in run.BACKENDS:
            raise UsageError(f"{path} records no backend: give --backend jax or torch")
    dataset = None
    if opts["dataset"] is not None:
        dataset = DataSource(opts["dataset"], args.layout, args.resize, args.color)
    result = run.evaluate_checkpoint(
        path,
        backend,
        dataset,
        seed=opts["seed"],
        iwae_k=opts["iwae_k"],
        dtype=opts["dtype"],
        device=opts["device"],
        batch_size=opts["batch_size"],
        binarize=opts["binarize"],
    )
    if opts["json"]:
        print(json.dumps(result, allow_nan=False))
    else:
        print(
            f"{result['backend']} {result['dtype']} on {result['n']} test images of "
            f"{result['dataset']} (binarization {result['binarize']}, seed {result['seed']}; "
            "nats per example):"
        )
        print(f"  -ELBO          {result['neg_elbo']:.6f}")
        print(f"  reconstruction {result['reconstruction']:.6f}")
        print(f"  KL             {result['kl']:.6f}")
        if result["neg_iwae"] is not None:
            print(
                f"  -log p(x) IWAE {result['neg_iwae']:.6f}  (K={result['iwae_k']} importance "
                "samples)"
            )
    return 0


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


# The pairs ``vae generate interpolate`` shows without --pair: four rows of consecutive images.
DEFAULT_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))


def cmd_generate(args: argparse.Namespace) -> int:
    from vae_tools import generate

    first = {
        "samples": generate.SAMPLES,
        "reconstruct": generate.RECONSTRUCTIONS,
        "interpolate": generate.INTERPOLATION,
        "encode": generate.LATENTS[:1],
    }[args.what]
    # Refused before the checkpoint, the backend or the data is loaded.
    generate.targets(args.out, first, args.overwrite)
    gen = generate.load_generator(args.checkpoint, args.backend, args.dtype, args.device)
    if args.what == "samples":
        paths = generate.write_samples(gen, args.out, args.n, args.seed, args.overwrite)
    else:
        dataset = None if args.dataset is None else data_source(args)
        x, labels = generate.inputs(gen, dataset, args.split, args.images)
        if args.what == "reconstruct":
            paths = generate.write_reconstructions(gen, args.out, x[: args.n], args.overwrite)
        elif args.what == "interpolate":
            pairs = args.pair or [p for p in DEFAULT_PAIRS if max(p) < len(x)]
            if not pairs:
                raise UsageError(f"the images hold {len(x)} image: give --pair A B")
            for a, b in pairs:
                if max(a, b) >= len(x):
                    raise UsageError(
                        f"--pair {a} {b}: the images hold {len(x)} images (indices 0 to "
                        f"{len(x) - 1})"
                    )
            index_a = [a for a, _ in pairs]
            index_b = [b for _, b in pairs]
            paths = generate.write_interpolation(
                gen, args.out, x[index_a], x[index_b], args.steps, args.overwrite
            )
        else:
            n = len(x) if args.n is None else args.n
            paths = generate.write_latents(
                gen,
                args.out,
                x[:n],
                None if labels is None else labels[:n],
                args.overwrite,
                batch_size=args.batch_size,
            )
    for path in paths:
        print(path)
    return 0
