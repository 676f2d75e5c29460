"""The VAE in JAX/Flax: pure functions of (params, x, eps), jittable and vmappable.

Never imports torch. Float64 needs ``jax.config.update("jax_enable_x64", True)`` first.
"""

from vae_common.config import VAEConfig
from vae_common.errors import DeviceError, ShapeError
from vae_jax.convert import conversion_table, from_canonical, to_canonical
from vae_jax.device import check_dtype, enable_float64, select_device, supports_float64, synchronize
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
from vae_jax.model import VAE, build_model, decode, decode_mean, encode, init_params
from vae_jax.sampling import reparameterize, sample_eps
from vae_jax.train import (
    TrainState,
    epoch_key,
    init_train_state,
    make_indexed_step,
    make_optimizer,
    make_run_steps,
    make_train_epoch,
    make_train_step,
)
from vae_jax.trainer import Trainer

# Names only the JAX backend has: the Flax <-> canonical layout table, the 64-bit switch and
# the pure-functional training pieces (a state value, a scanned epoch).
JAX_ONLY = (
    "conversion_table",
    "enable_float64",
    "TrainState",
    "epoch_key",
    "init_train_state",
    "make_indexed_step",
    "make_train_epoch",
)

__all__ = [
    "VAE",
    "DeviceError",
    "ShapeError",
    "Trainer",
    "VAEConfig",
    "bernoulli_log_likelihood",
    "build_model",
    "check_dtype",
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
    "make_optimizer",
    "make_run_steps",
    "make_train_step",
    "negative_elbo",
    "negative_iwae_bound",
    "objective",
    "reparameterize",
    "sample_eps",
    "select_device",
    "standard_normal_log_density",
    "supports_float64",
    "synchronize",
    "to_canonical",
    "conversion_table",
    "enable_float64",
    "TrainState",
    "epoch_key",
    "init_train_state",
    "make_indexed_step",
    "make_train_epoch",
]
