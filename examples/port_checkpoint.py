"""Port a checkpoint between backends: evaluate it in JAX and in PyTorch, and load it into plain
PyTorch with ``load_state_dict``.

    python examples/train_jax.py --out runs/example-jax
    python examples/port_checkpoint.py --checkpoint runs/example-jax/checkpoint.safetensors

A checkpoint is one safetensors file in PyTorch's ``state_dict`` names and layouts, with the model
config in its metadata, so nothing needs converting: each backend rebuilds the model from the
config, and the two evaluations (with the same seeded noise) agree to the float32 tolerance.
"""

from __future__ import annotations

import argparse

import numpy as np
import safetensors.torch
import torch

import vae_jax.train
import vae_torch
import vae_torch.train
from vae_common.checkpoint import load_checkpoint
from vae_common.compare import TOLERANCES, rel_diff
from vae_common.data import load_dataset

TRAINERS = {"jax": vae_jax.train.Trainer, "torch": vae_torch.train.Trainer}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.safetensors")
    parser.add_argument(
        "--dataset",
        default="digits",
        help="the dataset it was trained on (its test split is evaluated)",
    )
    parser.add_argument("--iwae-k", type=int, default=100, help="importance samples for IWAE")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared evaluation noise")
    args = parser.parse_args(argv)

    state, config, meta = load_checkpoint(args.checkpoint)  # checks every name and shape
    print(f"{args.checkpoint}: trained in {meta.get('backend', '?')}, config {config.to_json()}")
    data = load_dataset(args.dataset)

    results, trainers = {}, {}
    for backend, trainer_class in TRAINERS.items():
        trainer = trainer_class(config)
        trainer.load_state_dict(state)
        trainers[backend] = trainer
        results[backend] = trainer.evaluate(data.test, seed=args.seed, iwae_k=args.iwae_k)
    tol = TOLERANCES["float32"]
    diffs = {
        k: rel_diff(results["jax"][k], results["torch"][k])
        for k in ("neg_elbo", "reconstruction", "kl", "neg_iwae")
    }
    for key, diff in diffs.items():
        print(
            f"{key:>15}: jax {results['jax'][key]:.6f}  torch {results['torch'][key]:.6f}  "
            f"rel. diff {diff:.1e}"
        )

    # Plain PyTorch: the file's tensors go straight into an nn.Module's load_state_dict (strict,
    # so every name and shape must match). build_model is an ordinary torch.nn.Module.
    model = vae_torch.build_model(config)
    model.load_state_dict(safetensors.torch.load_file(args.checkpoint))
    x = data.test[:16]
    with torch.no_grad():
        mean, _ = model.encoder(torch.as_tensor(x))
    diffs["encoder mean (plain torch vs jax)"] = rel_diff(
        mean.numpy(), trainers["jax"].encode_mean(x)
    )
    print(
        f"plain torch load_state_dict: posterior means of {len(x)} test images match JAX's to "
        f"{diffs['encoder mean (plain torch vs jax)']:.1e}"
    )

    agree = bool(max(diffs.values()) <= tol)
    print(
        f"max rel. diff {max(diffs.values()):.1e} (tolerance {tol:g}): "
        f"{'the backends agree' if agree else 'MISMATCH'}"
    )
    return {
        "evaluations": results,
        "rel_diffs": diffs,
        "agree": agree,
        "tolerance": tol,
        "mean": np.asarray(mean),
    }


if __name__ == "__main__":
    raise SystemExit(0 if main()["agree"] else 1)
