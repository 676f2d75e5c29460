"""The VAE in PyTorch: the same functions, names and reductions as ``vae_jax``.

Never imports jax. Parameters live under canonical names, so ``state_dict()`` is the canonical
state.
"""

from vae_common.config import VAEConfig
from vae_common.errors import DeviceError, ShapeError
from vae_torch._onednn import cpu_linear
from vae_torch.convert import from_canonical, to_canonical
from vae_torch.device import check_dtype, select_device, supports_float64, synchronize
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
from vae_torch.model import VAE, build_model, decode, decode_mean, encode, init_params
from vae_torch.sampling import reparameterize, sample_eps
from vae_torch.train import (
    cpu_compiler,
    make_compiled_step,
    make_optimizer,
    make_run_steps,
    make_train_step,
    require_compiler,
)
from vae_torch.trainer import Trainer

# Names only the torch backend has: the compiled training step and its C++ compiler check, and
# the choice of the CPU float32 dense layers' GEMM library (XLA picks its own).
TORCH_ONLY = ("cpu_compiler", "cpu_linear", "make_compiled_step", "require_compiler")

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
    "cpu_compiler",
    "cpu_linear",
    "make_compiled_step",
    "require_compiler",
]
