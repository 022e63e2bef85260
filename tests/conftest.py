import os
import tempfile

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
# Exact float32 products on every backend: GPUs otherwise run float32 matmuls as TF32 (JAX's
# default precision there), ~1e-3 relative, which the float64-oracle tolerances would flag.
jax.config.update("jax_default_matmul_precision", "highest")

# The processes the tests start (`python -m launch.main` and friends, run over the same small
# programs again and again) share one XLA compilation cache: on 2 cores those tests take half
# the time. Only identical programs (same HLO, options, flags, versions) are reused, so no
# result can change. Not in this process (nor in pytest-xdist's workers, which inherit the
# environment): for the many tiny programs compiled in-process, writing every one to disk cost
# more than it saved (test_cells.py: 63 s without, 89 s with a cold cache).
jax.config.update("jax_enable_compilation_cache", False)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"seqjax-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(512 * 2**20))
