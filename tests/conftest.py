import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
# Exact float32 products on every backend: GPUs otherwise run float32 matmuls as TF32 (JAX's
# default precision there), ~1e-3 relative, which the float64-oracle tolerances would flag.
jax.config.update("jax_default_matmul_precision", "highest")
