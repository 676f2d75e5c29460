"""Unit-test set-up: JAX in float64 mode for the whole session.

The switch is process-global and must be set before any array exists, so it lives here rather
than in a test. Float32 models still compute in float32: they pass their dtype explicitly.
"""

try:
    import jax
except ImportError:  # a torch-only install still runs the numpy and torch tests
    jax = None
else:
    jax.config.update("jax_enable_x64", True)
