"""Train the VAE with PyTorch and save a checkpoint that both backends (and plain PyTorch) load.

    python examples/train_torch.py --epochs 10 --out runs/example-torch
    python examples/train_torch.py --dataset fashion-mnist:data/fashion --epochs 20

Each epoch is one ``Trainer.train_epoch`` call over the batches that
``vae_common.data.batch_indices`` draws, with the data on the device and the losses read once
per epoch; the JAX example is the same script line for line. ``--device`` picks cpu, cuda, xpu or
mps (default: ``$VAE_TORCH_DEVICE``, else the first available).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vae_common.checkpoint import save_checkpoint
from vae_common.config import VAEConfig
from vae_common.data import batch_indices, load_dataset, validate_images
from vae_common.spec import init_canonical
from vae_common.training import TrainConfig
from vae_torch.train import Trainer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--dataset",
        default="digits",
        help="digits | mnist:DIR | fashion-mnist:DIR | kmnist:DIR | npz:FILE",
    )
    parser.add_argument("--out", default="runs/example-torch", help="directory for the checkpoint")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu | cuda | xpu | mps (default: auto)")
    args = parser.parse_args(argv)

    data = load_dataset(args.dataset)
    validate_images(data.train, "bernoulli", name="train images")
    config = VAEConfig(input_shape=data.image_shape, hidden=(400,), latent_dim=args.latent_dim)
    trainer = Trainer(config, TrainConfig(lr=args.lr), device=args.device)
    # The same numpy-drawn initial weights the JAX example starts from.
    trainer.load_state_dict(init_canonical(config, seed=args.seed, dtype="float32"))

    train_x = trainer.put_data(data.train)  # on the device once
    for epoch in range(1, args.epochs + 1):
        batches = batch_indices(len(data.train), args.batch_size, args.seed, epoch)
        losses = trainer.train_epoch(train_x, batches, args.seed, epoch)  # (steps,) losses
        test = trainer.evaluate(data.test, seed=args.seed)
        print(
            f"epoch {epoch}: train loss {losses.mean():.3f}, test -ELBO {test['neg_elbo']:.3f} nats"
        )

    test = trainer.evaluate(data.test, seed=args.seed, iwae_k=100)
    print(f"test -ELBO {test['neg_elbo']:.3f}, IWAE (k=100) -log p(x) {test['neg_iwae']:.3f} nats")
    checkpoint = Path(args.out) / "checkpoint.safetensors"
    save_checkpoint(
        checkpoint,
        trainer.state_dict(),
        config,
        {"backend": "torch", "dataset": args.dataset, "epoch": str(args.epochs)},
    )
    print(f"saved {checkpoint}")
    return {"checkpoint": checkpoint, "test": test}


if __name__ == "__main__":
    main()
