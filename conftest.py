"""Session set-up shared by tests/ and parity_tests/.

- JAX float64 is switched on before any array exists (the switch is process-global); float32
  models still compute in float32 because they pass their dtype explicitly.
- JAX's persistent compilation cache: many tests build the same small models, and a cache hit
  replaces a 1-5 s XLA compile.
- Under pytest-xdist each worker gets one torch thread: two workers x two OpenMP threads on a
  2-core machine spin against each other and run ~10x slower.
"""

import os
from pathlib import Path

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

if os.environ.get("PYTEST_XDIST_WORKER"):
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(1)
