"""Symmetric mutations: the same mistake written into both backends (or into the code they share).

A parity test cannot see these, and a generic mutation tool cannot make them (it changes one
place at a time). ``mutation/symmetric.py`` applies each entry to a copy of the tree and runs its
tests; every entry must be killed.

Each entry: ``name``; ``reason`` (the bug it stands for); ``edits``, a list of
``(file, exact old text, new text)``, each old text occurring exactly once in its file (the script
refuses a stale entry rather than testing an unmutated tree); optional ``tests`` (default
``DEFAULT_TESTS``).
"""

from __future__ import annotations

DEFAULT_TESTS = [
    "tests/test_reference_training.py",
    "tests/test_reference_eval_data.py",
    "tests/test_train_jax_torch.py",
    "tests/test_losses.py",
    "tests/test_data.py",
    "tests/test_run.py",
    "parity_tests/test_trajectory.py",
]

SYMMETRIC: list[dict] = [
    {
        "name": "lr-scaled",
        "reason": "both trainers build Adam with 1.01 x the configured learning rate",
        "edits": [
            ("vae_jax/train.py", "optax.adam(train.lr,", "optax.adam(train.lr * 1.01,"),
            ("vae_torch/train.py", "dict(lr=train.lr,", "dict(lr=train.lr * 1.01,"),
        ],
    },
    {
        "name": "adam-eps-ignored",
        "reason": "both trainers use Adam's default epsilon instead of TrainConfig.adam_eps",
        "edits": [
            ("vae_jax/train.py", "eps=train.adam_eps)", "eps=1e-8)"),
            ("vae_torch/train.py", "eps=train.adam_eps)", "eps=1e-8)"),
        ],
    },
    {
        "name": "adam-betas-swapped",
        "reason": "both trainers pass b2 as the first-moment decay and b1 as the second",
        "edits": [
            ("vae_jax/train.py", "b1=train.b1, b2=train.b2", "b1=train.b2, b2=train.b1"),
            ("vae_torch/train.py", "betas=(train.b1, train.b2)", "betas=(train.b2, train.b1)"),
        ],
    },
    {
        "name": "warmup-off-by-one",
        "reason": "both trainers give step t the KL weight of step t + 1",
        "edits": [
            (
                "vae_jax/train.py",
                "beta_at(train, state.step.astype(model.dtype), jnp.minimum)",
                "beta_at(train, (state.step + 1).astype(model.dtype), jnp.minimum)",
            ),
            (
                "vae_torch/train.py",
                "eps, beta_at(train, index), train.free_bits",
                "eps, beta_at(train, index + 1), train.free_bits",
            ),
            (
                "vae_torch/train.py",
                "ddp(x, eps, beta_at(train, index))",
                "ddp(x, eps, beta_at(train, index + 1))",
            ),
        ],
    },
    {
        "name": "dynamic-binarization-threshold",
        "reason": "both trainers threshold at 0.5 instead of drawing Bernoulli(intensity)",
        "edits": [
            (
                "vae_jax/train.py",
                "jax.random.bernoulli(k_bin, x).astype(model.dtype)",
                "(x > 0.5).astype(model.dtype)",
            ),
            (
                "vae_torch/trainer.py",
                "torch.bernoulli(x, generator=gen)",
                "(x > 0.5).to(x.dtype)",
            ),
        ],
    },
    {
        "name": "static-binarization-threshold",
        "reason": "the shared static binarization thresholds at 0.5 instead of drawing",
        "edits": [
            (
                "vae_common/batches.py",
                "(rng.random(x.shape, dtype=np.float32) < x)",
                "(np.full(x.shape, 0.5, np.float32) < x)",
            ),
        ],
    },
    {
        "name": "static-binarization-seed",
        "reason": "a training run binarizes its data from another seed than the documented one",
        "edits": [
            (
                "vae_tools/run_data.py",
                "np.random.default_rng([settings.seed, STATIC_STREAM])",
                "np.random.default_rng([settings.seed, TEST_BINARIZE_STREAM])",
            ),
        ],
    },
    {
        "name": "free-bits-batch-sum",
        "reason": "both objectives sum the per-dimension KL over the batch instead of averaging",
        "edits": [
            (
                "vae_jax/losses.py",
                "kl_dims = jnp.mean(gaussian_kl_per_dim(mean, logvar), axis=0)",
                "kl_dims = jnp.sum(gaussian_kl_per_dim(mean, logvar), axis=0)",
            ),
            (
                "vae_torch/losses.py",
                "kl_dims = torch.mean(gaussian_kl_per_dim(mean, logvar), dim=0)",
                "kl_dims = torch.sum(gaussian_kl_per_dim(mean, logvar), dim=0)",
            ),
        ],
    },
    {
        "name": "free-bits-floor-per-example",
        "reason": "both objectives floor each example's KL_j before the batch mean",
        "edits": [
            (
                "vae_jax/losses.py",
                "kl_dims = jnp.mean(gaussian_kl_per_dim(mean, logvar), axis=0)",
                "kl_dims = jnp.mean(jnp.maximum(free_bits, gaussian_kl_per_dim(mean, logvar)), 0)",
            ),
            (
                "vae_torch/losses.py",
                "kl_dims = torch.mean(gaussian_kl_per_dim(mean, logvar), dim=0)",
                "kl_dims = torch.mean(gaussian_kl_per_dim(mean, logvar).clamp(min=free_bits), 0)",
            ),
        ],
    },
    {
        "name": "free-bits-floor-the-total",
        "reason": "both objectives floor the summed KL at L * free_bits instead of each dimension",
        "edits": [
            (
                "vae_jax/losses.py",
                "jnp.sum(jnp.maximum(free_bits, kl_dims))",
                "jnp.maximum(free_bits * kl_dims.shape[0], jnp.sum(kl_dims))",
            ),
            (
                "vae_torch/losses.py",
                "torch.sum(torch.clamp(kl_dims, min=free_bits))",
                "torch.clamp(torch.sum(kl_dims), min=free_bits * kl_dims.shape[0])",
            ),
        ],
    },
    {
        "name": "iwae-k-minus-1",
        "reason": "the shared evaluation draws K - 1 importance samples instead of K",
        "edits": [
            (
                "vae_common/evaluation.py",
                "(iwae_k, len(xb), latent_dim)",
                "(iwae_k - 1, len(xb), latent_dim)",
            ),
        ],
    },
    {
        "name": "eval-elbo-uses-iwae-stream",
        "reason": "the shared evaluation draws the ELBO noise from the IWAE stream 2j + 1",
        "edits": [
            (
                "vae_common/evaluation.py",
                "standard_normal(seed, 2 * j, ",
                "standard_normal(seed, 2 * j + 1, ",
            ),
        ],
    },
    {
        "name": "epoch-seed-swapped",
        "reason": "the torch generator seed is derived from (epoch, seed) instead of (seed, epoch)",
        "edits": [
            (
                "vae_common/training.py",
                "np.random.SeedSequence([seed, epoch])",
                "np.random.SeedSequence([epoch, seed])",
            ),
        ],
    },
    {
        "name": "batch-order-seed",
        "reason": "the shared batch order is drawn from (seed, epoch + 1)",
        "edits": [
            (
                "vae_common/batches.py",
                "np.random.default_rng([seed, epoch])",
                "np.random.default_rng([seed, epoch + 1])",
            ),
        ],
    },
    {
        "name": "shared-noise-seed",
        "reason": "the shared evaluation noise is drawn from (stream, seed)",
        "edits": [
            (
                "vae_common/batches.py",
                "np.random.default_rng([seed, stream])",
                "np.random.default_rng([stream, seed])",
            ),
        ],
    },
    {
        "name": "jax-epoch-key",
        "reason": "the JAX epoch key folds in epoch + 1",
        "edits": [
            (
                "vae_jax/train.py",
                "fold_in(jax.random.key(seed), epoch)",
                "fold_in(jax.random.key(seed), epoch + 1)",
            ),
        ],
    },
    {
        "name": "jax-keys-swapped",
        "reason": "the JAX step uses the binarization key for the noise and vice versa",
        "edits": [
            (
                "vae_jax/train.py",
                "k_bin, k_eps = jax.random.split(key)",
                "k_eps, k_bin = jax.random.split(key)",
            ),
        ],
    },
]
