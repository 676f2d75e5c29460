"""The VAE in JAX/Flax: pure functions of (params, x, eps), jittable and vmappable.

Never imports torch. Float64 needs ``jax.config.update("jax_enable_x64", True)`` first.
"""

from vae_common.config import VAEConfig
from vae_jax.convert import conversion_table, from_canonical, to_canonical
from vae_jax.losses import (
    bernoulli_log_likelihood,
    elbo_terms,
    gaussian_kl,
    gaussian_kl_per_dim,
    gaussian_log_likelihood,
    log_likelihood,
    loss,
    negative_elbo,
    negative_iwae_bound,
    objective,
    standard_normal_log_density,
)
from vae_jax.model import (
    VAE,
    ShapeError,
    build_model,
    decode,
    decode_mean,
    encode,
    init_params,
)
from vae_jax.sampling import reparameterize, sample_eps

# Names only the JAX backend has: the Flax <-> canonical layout table.
JAX_ONLY = ("conversion_table",)

__all__ = [
    "VAE",
    "ShapeError",
    "VAEConfig",
    "bernoulli_log_likelihood",
    "build_model",
    "decode",
    "decode_mean",
    "elbo_terms",
    "encode",
    "from_canonical",
    "gaussian_kl",
    "gaussian_kl_per_dim",
    "gaussian_log_likelihood",
    "init_params",
    "log_likelihood",
    "loss",
    "negative_elbo",
    "negative_iwae_bound",
    "objective",
    "reparameterize",
    "sample_eps",
    "standard_normal_log_density",
    "to_canonical",
    "conversion_table",
]
