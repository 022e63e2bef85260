import os
import tempfile

# The suite compiles thousands of tiny programs, and XLA's CPU backend spends most of that time
# optimising machine code they run for microseconds: at level 0 tests/test_cells.py took 42 s
# instead of 63. The programs compute the same values (the float64 oracles' tolerances hold);
# set before jax starts, and inherited by the processes the tests start.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import jax  # noqa: E402

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
# A bounded cache makes JAX lock it (the `filelock` package, in the test extra): two workers'
# processes writing and reading the same entry never see half a file.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(512 * 2**20))
