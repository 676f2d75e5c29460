"""What ``vae generate samples|reconstruct|interpolate|encode`` does, given its parsed
arguments: the files of ``vae_tools.generate`` from a checkpoint loaded by
``vae_tools.generator.load_generator``.
"""

from __future__ import annotations

import argparse

from vae_common.errors import UsageError
from vae_tools.cli_args import data_source

# The pairs ``vae generate interpolate`` shows without --pair: four rows of consecutive images.
DEFAULT_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))


def cmd_generate(args: argparse.Namespace) -> int:
    from vae_tools import generate
    from vae_tools.generator import load_generator

    first = {
        "samples": generate.SAMPLES,
        "reconstruct": generate.RECONSTRUCTIONS,
        "interpolate": generate.INTERPOLATION,
        "encode": generate.LATENTS[:1],
    }[args.what]
    # Refused before the checkpoint, the backend or the data is loaded.
    generate.targets(args.out, first, args.overwrite)
    gen = load_generator(args.checkpoint, args.backend, args.dtype, args.device)
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
