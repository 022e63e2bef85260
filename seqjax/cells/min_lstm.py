"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): the LSTM with gates from x_t only,
forget and input gate normalised to sum to 1.

  f_t = σ(x_t W_f + b_f),   i_t = σ(x_t W_i + b_i),   ĥ_t = x_t W_h + b_h
  h_t = (f_t h_{t-1} + i_t ĥ_t) / (f_t + i_t),      h_0 = 0

Computed as h_t = a_t h_{t-1} + (1 - a_t) ĥ_t with a_t = f/(f + i) = σ(log σ(f) - log σ(i)):
the same numbers, but no 0/0 when both gates underflow (logits below about -100 in float32).
Gates from x_t only: `seqjax.scan` runs all steps at once (`seqjax.cells._parallel`).

Init: W_f, W_i, W_h Glorot-uniform over (F, H), biases 0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells import _parallel
from seqjax.cells.base import Cell, check_dtype, positive_int, state_dtype


class MinLSTMState(NamedTuple):
  h: jax.Array  # [*batch, H]


def min_lstm(hidden_size: int, dtype=None, parallel=None) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params and state stay float32.
  parallel: how `seqjax.scan` runs it: True `jax.lax.associative_scan`, False a loop over the
  elementwise part, None the measured choice for the backend."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)
  parallel = _parallel.check_parallel(parallel)

  def init(key, input_size: int):
    return _parallel.init_params(key, input_size, H, ("W_f", "W_i", "W_h"), ("b_f", "b_i", "b_h"))

  def initial_state(params, batch_shape=()):
    return MinLSTMState(h=jnp.zeros((*batch_shape, H), state_dtype(params["W_f"].dtype)))

  def project(params, x):
    pf, pi, ph = (_parallel.affine(params, x, gate, dtype) for gate in ("f", "i", "h"))
    log_ratio = jax.nn.log_sigmoid(pf) - jax.nn.log_sigmoid(pi)  # log(f / i), finite
    return jax.nn.sigmoid(log_ratio), jax.nn.sigmoid(-log_ratio) * ph  # a, (1 - a) ĥ

  step, fast_loop = _parallel.linear_loop(MinLSTMState, project, parallel)
  return Cell(init, initial_state, step, "min_lstm", H, fast_loop)
