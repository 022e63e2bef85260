"""The RWA without its recurrent terms (no h_{t-1} W_gh, no h_{t-1} W_ah):

  z_t = (x_t W_u + b_u) tanh(x_t W_g + b_g),   a_t = x_t W_a
  h_t = tanh(n_t / d_t),   n_t = Σ_{i≤t} z_i e^{a_i},   d_t = Σ_{i≤t} e^{a_i},   h_0 = n_0 = d_0 = 0

n/d is a running softmax-weighted mean of the z's: causal attention with one score per unit.
Computed in the RWA's running-max form (`seqjax.cells.rwa`): m_t = max(m_{t-1}, a_t), n and d
stored scaled by e^{-m_t}, m_0 the dtype's most negative finite number (the first step exact),
m without gradient. As z and a read x_t only, (m, n, d) of a stretch of steps combine
associatively,

  (m1, n1, d1) then (m2, n2, d2) = (m, n1 e^{m1-m} + n2 e^{m2-m}, d1 e^{m1-m} + d2 e^{m2-m}),
  m = max(m1, m2),   identity (m_0, 0, 0),

so `seqjax.scan` runs all steps at once (`seqjax.cells._parallel`). Every exponent is ≤ 0 and
d ≥ 1 once a step is seen: no overflow, no 0/0, for any finite input and any length.

Init: W_u, W_g, W_a Glorot-uniform over (F, H), biases 0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells import _parallel
from seqjax.cells.base import (Cell, bias, check_dtype, matmul, positive_int,
                               state_dtype)

_sg = jax.lax.stop_gradient


class MinRWAState(NamedTuple):
  h: jax.Array  # [*batch, H]  tanh(n / d)
  n: jax.Array  # [*batch, H]  Σ z e^{a - m}
  d: jax.Array  # [*batch, H]  Σ e^{a - m}
  m: jax.Array  # [*batch, H]  running max of a


def min_rwa(hidden_size: int, dtype=None, parallel=None) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params, n, d, m and h stay float32.
  parallel: how `seqjax.scan` runs it: True `jax.lax.associative_scan`, False a loop over the
  elementwise part, None the measured choice for the backend."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)
  parallel = _parallel.check_parallel(parallel)

  def init(key, input_size: int):
    return _parallel.init_params(key, input_size, H, ("W_u", "W_g", "W_a"), ("b_u", "b_g"))

  def initial_state(params, batch_shape=()):
    acc = state_dtype(params["W_u"].dtype)
    zeros = jnp.zeros((*batch_shape, H), acc)
    return MinRWAState(h=zeros, n=zeros, d=zeros, m=jnp.full((*batch_shape, H),
                                                             jnp.finfo(acc).min, acc))

  def project(params, x):
    acc = state_dtype(params["W_u"].dtype)
    u, g = matmul(x, params["W_u"], dtype), matmul(x, params["W_g"], dtype)
    z = (u + bias(params["b_u"], u)) * jnp.tanh(g + bias(params["b_g"], g))
    return z.astype(acc), matmul(x, params["W_a"], dtype).astype(acc)

  def update(state, terms):
    z, a = terms
    m = _sg(jnp.maximum(state.m, a))
    rescale = jnp.exp(_sg(state.m) - m)
    w = jnp.exp(a - m)
    n = state.n * rescale + z * w
    d = state.d * rescale + w
    h = jnp.tanh(n / d)
    return MinRWAState(h=h, n=n, d=d, m=m), h

  def associative(terms, state0, active_T, resets):
    z, a = terms
    m = _sg(a)
    w = jnp.exp(a - m)  # 1, carrying a's gradient as e^{a - m} does in `update`
    lowest = jnp.finfo(a.dtype).min
    elements = _parallel.identity_where_padded(active_T, (m, z * w, w), (lowest, 0, 0))
    m, n, d = _parallel.prefix_combine(_combine, elements, lambda s: (_sg(s.m), s.n, s.d),
                                       state0, resets)
    return _parallel.weighted_mean_outputs(MinRWAState, m, n, d, state0, active_T)

  step, fast_loop = _parallel.min_cell_loop(project, update, associative, parallel)
  return Cell(init, initial_state, step, "min_rwa", H, fast_loop)


def _combine(first, then):
  """(m, n, d) of a stretch of steps followed by another (every m without gradient)."""
  (m1, n1, d1), (m2, n2, d2) = first, then
  m = jnp.maximum(m1, m2)
  r1, r2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
  return m, n1 * r1 + n2 * r2, d1 * r1 + d2 * r2
