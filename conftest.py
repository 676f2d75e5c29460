"""Session set-up shared by tests/ and parity_tests/, in one place (pytest loads this file first,
also when a single test module is run on its own).

- JAX float64 is switched on before any array exists (the switch is process-global); float32
  models still compute in float32 because they pass their dtype explicitly.
- JAX's persistent compilation cache: many tests build the same small models, and a cache hit
  replaces a 1-5 s XLA compile.
- One torch thread per process: the suite runs in two pytest-xdist workers on two cores, and two
  workers x two OpenMP threads spin against each other and run ~10x slower.
- ``ieee_subnormals``: a fixture for modules whose results depend on subnormal floats.
"""

from pathlib import Path

import pytest

try:
    import jax
except ImportError:  # a torch-only install still runs the numpy and torch tests
    jax = None
else:
    jax.config.update("jax_enable_x64", True)
    cache = Path(__file__).parent / ".pytest_cache" / "jax-compilation-cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

try:
    import torch
except ImportError:  # a JAX-only install still runs the numpy and JAX tests
    torch = None
else:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ieee_subnormals():
    """Subnormal floats on again for a module whose results depend on them.

    ``torch.set_flush_denormal(True)`` changes process-wide floating-point state, for numpy, JAX
    and hypothesis too; the torch trainer switches it off again after training, and this guards
    against anything else leaving it on.
    """
    if torch is not None:
        torch.set_flush_denormal(False)
