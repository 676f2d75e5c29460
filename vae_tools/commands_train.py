"""What ``vae train`` and ``vae eval`` do, given their parsed arguments (the effective options
come from ``vae_tools.options``; the work from ``vae_tools.run``). Each returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import TYPE_CHECKING, Any

from vae_common.data import DataSource
from vae_common.errors import DeviceError, UsageError
from vae_tools.cli_args import config_from_args, data_source

if TYPE_CHECKING:
    from vae_tools.run_launch import Placement


def cmd_train(args: argparse.Namespace) -> int:
    from vae_tools import options, run_launch
    from vae_tools.run_ranks import RankLostError, RanksStopped

    # Flags, --config, the resumed run's record and the defaults, merged; a resume that would
    # change a model or training setting is refused here, naming the flag.
    opts = options.train_options(args, args.parser)
    # Where it trains (--devices): here, alone or as one of several processes (then joined
    # now), in a subprocess with forced JAX host devices, or in torch ranks launched from here.
    placement = run_launch.place(opts)
    if placement.mode == "reexec":
        assert placement.devices is not None
        return run_launch.reexec_jax(opts, placement.devices)
    try:
        return _train(opts, placement)
    except RanksStopped as exc:
        # Another process failed and reported it: one message for the run.
        return exc.status
    except RankLostError:
        if placement.writer:
            raise
        return 1
    finally:
        placement.leave()


def _train(opts: dict[str, Any], placement: Placement) -> int:
    from vae_common.checkpoint import load_checkpoint
    from vae_common.data import load_dataset
    from vae_common.training import TrainConfig
    from vae_tools import options, run, run_launch

    eff = argparse.Namespace(**opts)
    several = placement.joined is not None
    # The run directory's refusals (a file, unwritable, locked, someone else's files) come
    # before the data is loaded; run.train makes them again under its lock. Processes of a
    # group leave them to run.train, where process 0 alone touches the directory.
    compile = compile_mode(eff)
    if compile == "cudagraph":
        check_cuda_graph(eff.backend, eff.device, placement.devices)
    if not several:
        run.check_run_dir(eff.out, resume=eff.resume, overwrite=eff.overwrite)
    # Streamed, a source stored as uint8 stays uint8 on the host (run_data.prepare_data makes
    # floats where the run needs them).
    ds = load_dataset(data_source(eff), keep_uint8=bool(eff.stream))
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
    if placement.mode == "launch":
        assert placement.devices is not None
        return run_launch.launch_torch(opts, placement.devices)
    metrics = run.train(
        eff.out,
        eff.backend,
        config,
        train,
        settings,
        eff.epochs,
        resume=bool(eff.resume),
        device=eff.device,
        compile=compile,
        init_state=init_state,
        dataset=ds,
        progress=not eff.quiet and placement.writer,
        overwrite=bool(eff.overwrite),
        patience=eff.patience,
        test_every_epoch=bool(eff.test_every_epoch),
        tensorboard=options.tensorboard_dir(opts),
        log_every=eff.log_every,
        flags=options.recorded_flags_of(opts),
        devices=placement.devices,
        stream=bool(eff.stream),
        prefetch=eff.prefetch,
    )
    if not placement.writer:
        return 0
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


def compile_mode(eff: argparse.Namespace) -> bool | str:
    """The ``Trainer(compile=...)`` of ``--compile`` and ``--cuda-graph``: ``"cudagraph"``,
    True or False; ``UsageError`` for both flags at once."""
    if eff.cuda_graph and eff.compile:
        raise UsageError(
            "give --compile (a compiled step) or --cuda-graph (the eager step replayed as a CUDA "
            "graph), not both"
        )
    return "cudagraph" if eff.cuda_graph else bool(eff.compile)


def check_cuda_graph(backend: str, device: str | None, devices: int | None) -> None:
    """Before any work: ``vae train --cuda-graph`` needs the backend's device (``--device``, or
    its default) to be a CUDA device (``DeviceError``), and torch one process
    (``UsageError`` for ``--devices`` N > 1)."""
    from vae_tools._backends import import_backend

    if backend == "torch" and devices is not None and devices > 1:
        raise UsageError(
            f"--cuda-graph replays torch's step on one device, got --devices {devices}; drop "
            "one of them (--compile works with --devices)"
        )
    module = import_backend(backend)
    trainer_module = importlib.import_module(f"{module.__name__}.trainer")
    chosen = module.select_device(device)
    if not trainer_module.on_cuda(chosen):
        name = chosen.type if backend == "torch" else chosen.platform
        raise DeviceError(
            f"--cuda-graph needs a CUDA device, got {name!r} ({backend}, --device "
            f"{device or 'default'}); train on CUDA (--device cuda), or drop --cuda-graph (a "
            "resumed run that recorded it: cuda-graph = false in a --config file)"
        )


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
