"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): the GRU with gates from x_t only.

  z_t = σ(x_t W_z + b_z),   ĥ_t = x_t W_h + b_h
  h_t = (1 - z_t) h_{t-1} + z_t ĥ_t,      h_0 = 0

h_t = a_t h_{t-1} + b_t with a_t = 1 - z_t = σ(-(x_t W_z + b_z)) and b_t = z_t ĥ_t both from x_t:
`seqjax.scan` runs all steps at once (`seqjax.cells._parallel`).

Init: W_z, W_h Glorot-uniform over (F, H), biases 0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells import _parallel
from seqjax.cells.base import Cell, check_dtype, positive_int, state_dtype


class MinGRUState(NamedTuple):
  h: jax.Array  # [*batch, H]


def min_gru(hidden_size: int, dtype=None, parallel=None) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params and state stay float32.
  parallel: how `seqjax.scan` runs it: True `jax.lax.associative_scan`, False a loop over the
  elementwise part, None the measured choice for the backend."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)
  parallel = _parallel.check_parallel(parallel)

  def init(key, input_size: int):
    return _parallel.init_params(key, input_size, H, ("W_z", "W_h"), ("b_z", "b_h"))

  def initial_state(params, batch_shape=()):
    return MinGRUState(h=jnp.zeros((*batch_shape, H), state_dtype(params["W_z"].dtype)))

  def project(params, x):
    pz, ph = _parallel.affine(params, x, "z", dtype), _parallel.affine(params, x, "h", dtype)
    return jax.nn.sigmoid(-pz), jax.nn.sigmoid(pz) * ph  # a = 1 - z, b = z ĥ

  step, fast_loop = _parallel.linear_loop(MinGRUState, project, parallel)
  return Cell(init, initial_state, step, "min_gru", H, fast_loop)
