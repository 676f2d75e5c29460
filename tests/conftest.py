"""Unit-test set-up: JAX in float64 mode for the whole session.

The switch is process-global and must be set before any array exists, so it lives here rather
than in a test. Float32 models still compute in float32: they pass their dtype explicitly.
"""

import pytest

try:
    import jax
except ImportError:  # a torch-only install still runs the numpy and torch tests
    jax = None
else:
    jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def ieee_subnormals():
    """Subnormal floats on again for a module whose results depend on them.

    ``torch.set_flush_denormal(True)`` changes process-wide floating-point state, for numpy, JAX
    and hypothesis too; the torch trainer switches it off again after training, and this guards
    against anything else leaving it on.
    """
    try:
        import torch
    except ImportError:
        return
    torch.set_flush_denormal(False)
