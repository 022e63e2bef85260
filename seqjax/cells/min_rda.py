"""The rda without its recurrent terms: the min_rwa with a forget gate from x_t.

  z_t = (x_t W_u + b_u) tanh(x_t W_g + b_g),   a_t = x_t W_a,   f_t = σ(x_t W_f + b_f)
  n_t = f_t n_{t-1} + z_t e^{a_t},   d_t = f_t d_{t-1} + e^{a_t}
  h_t = tanh(n_t / d_t),   h_0 = n_0 = d_0 = 0

Computed in the rda's running-max form with the discount in log space (`seqjax.cells.rda`):
m_t = max(m_{t-1} + log f_t, a_t), n and d stored scaled by e^{-m_t}, m without gradient. As z, a
and f read x_t only, a stretch of steps is summarised by (L, m, n, d), L its summed log f (how
much it discounts what came before it), and two stretches combine associatively,

  (L1, m1, n1, d1) then (L2, m2, n2, d2)
    = (L1 + L2, m, n1 e^{m1 + L2 - m} + n2 e^{m2 - m}, d1 e^{m1 + L2 - m} + d2 e^{m2 - m}),
  m = max(m1 + L2, m2),   identity (0, m_0, 0, 0),

m_0 the dtype's most negative finite number, and L, m1 + L2 clamped there (never -inf, so no
-inf - (-inf)). `seqjax.scan` then runs all steps at once (`seqjax.cells._parallel`). Every
exponent is ≤ 0 and d ≥ 1 once a step is seen: no overflow, no 0/0, for any finite input, gate
value and length. With f ≡ 1 (b_f → +∞) the cell is the min_rwa.

Init: W_u, W_g, W_a, W_f Glorot-uniform over (F, H), b_u = b_g = 0, b_f = `forget_bias`
(default 1.0, as the rda's: chosen by measurement, BUILD_NOTES.md).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells import _parallel
from seqjax.cells.base import Cell, check_dtype, matmul, positive_int, state_dtype
from seqjax.cells.rda import check_forget_bias, discount_and_add

_sg = jax.lax.stop_gradient


class MinRDAState(NamedTuple):
  h: jax.Array  # [*batch, H]  tanh(n / d)
  n: jax.Array  # [*batch, H]  Σ_i (Π_{j>i} f_j) z_i e^{a_i - m}
  d: jax.Array  # [*batch, H]  Σ_i (Π_{j>i} f_j) e^{a_i - m}
  m: jax.Array  # [*batch, H]  running max of the discounted log weights


def min_rda(hidden_size: int, dtype=None, parallel=None, *, forget_bias: float = 1.0) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params, n, d, m and h stay float32.
  parallel: how `seqjax.scan` runs it: True `jax.lax.associative_scan`, False a loop over the
  elementwise part, None the measured choice for the backend.
  forget_bias: the initial value of b_f (σ(forget_bias) is the starting discount per step)."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)
  parallel = _parallel.check_parallel(parallel)
  forget_bias = check_forget_bias(forget_bias)

  def init(key, input_size: int):
    params = _parallel.init_params(key, input_size, H, ("W_u", "W_g", "W_a", "W_f"),
                                   ("b_u", "b_g"))
    return params | {"b_f": jnp.full((H,), forget_bias, jnp.float32)}

  def initial_state(params, batch_shape=()):
    acc = state_dtype(params["W_u"].dtype)
    zeros = jnp.zeros((*batch_shape, H), acc)
    return MinRDAState(h=zeros, n=zeros, d=zeros, m=jnp.full((*batch_shape, H),
                                                             jnp.finfo(acc).min, acc))

  def project(params, x):
    u, g, f = (_parallel.affine(params, x, gate, dtype) for gate in ("u", "g", "f"))
    a = matmul(x, params["W_a"], dtype).astype(u.dtype)
    return u * jnp.tanh(g), a, jax.nn.log_sigmoid(f)

  def update(state, terms):
    z, a, log_f = terms
    n, d, m, _, _ = discount_and_add(state, z, a, log_f)
    h = jnp.tanh(n / d)
    return MinRDAState(h=h, n=n, d=d, m=m), h

  def associative(terms, state0, active_T, resets):
    z, a, log_f = terms
    m = _sg(a)
    w = jnp.exp(a - m)  # 1, carrying a's gradient as e^{a - m} does in `update`
    lowest = jnp.finfo(a.dtype).min
    elements = _parallel.identity_where_padded(active_T, (log_f, m, z * w, w), (0, lowest, 0, 0))
    start_of = lambda s: (jnp.zeros_like(s.m), _sg(s.m), s.n, s.d)
    _, m, n, d = _parallel.prefix_combine(_combine, elements, start_of, state0, resets)
    return _parallel.weighted_mean_outputs(MinRDAState, m, n, d, state0, active_T)

  step, fast_loop = _parallel.min_cell_loop(project, update, associative, parallel)
  return Cell(init, initial_state, step, "min_rda", H, fast_loop)


def _combine(first, then):
  """(L, m, n, d) of a stretch of steps followed by another (every m without gradient; the
  L's carry log f's gradient into the factor e^{m1 + L2 - m})."""
  (L1, m1, n1, d1), (L2, m2, n2, d2) = first, then
  lowest = jnp.finfo(m1.dtype).min
  old = jnp.maximum(m1 + L2, lowest)
  m = _sg(jnp.maximum(old, m2))
  r1, r2 = jnp.exp(old - m), jnp.exp(m2 - m)
  return jnp.maximum(L1 + L2, lowest), m, n1 * r1 + n2 * r2, d1 * r1 + d2 * r2
