"""The VAE in PyTorch: the same functions, names and reductions as ``vae_jax``.

Never imports jax. Parameters live under canonical names, so ``state_dict()`` is the canonical
state.
"""

from vae_common.config import VAEConfig
from vae_torch.convert import from_canonical, to_canonical
from vae_torch.device import DeviceError, check_dtype, select_device, supports_float64, synchronize
from vae_torch.losses import (
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
from vae_torch.model import (
    VAE,
    ShapeError,
    build_model,
    decode,
    decode_mean,
    encode,
    init_params,
)
from vae_torch.sampling import reparameterize, sample_eps

# Names only the torch backend has: JAX places arrays itself and has no device selector.
TORCH_ONLY = ("DeviceError", "check_dtype", "select_device", "supports_float64", "synchronize")

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
    "DeviceError",
    "check_dtype",
    "select_device",
    "supports_float64",
    "synchronize",
]
