"""Recurrent discounted attention (Maginnis & Richemond 2017): the RWA with a forget gate, so
that it can lower the weight it gave the past.

  u_t = x_t W_u + b_u
  g_t = x_t W_gx + h_{t-1} W_gh + b_g
  a_t = x_t W_ax + h_{t-1} W_ah            (no bias: it cancels in n/d)
  f_t = σ(x_t W_fx + h_{t-1} W_fh + b_f)   (the discount)
  z_t = u_t tanh(g_t)
  n_t = f_t n_{t-1} + z_t e^{a_t},   d_t = f_t d_{t-1} + e^{a_t}
  h_t = tanh(n_t / d_t),   h_0 = tanh(s0)

Stable form: the RWA's running max (`seqjax.cells.rwa`) with the discount in log space,
log f_t = log σ(·) (jax.nn.log_sigmoid: finite for every finite logit, never log 0),

  m_t = max(m_{t-1} + log f_t, a_t)
  n_t = n_{t-1} e^{m_{t-1} + log f_t - m_t} + z_t e^{a_t - m_t},   d_t likewise,

so every exponent is ≤ 0 and d_t ≥ 1 from the first step on (one of the two exponents is 0).
m_0 is the dtype's most negative finite number, and m_{t-1} + log f_t is clamped there, so it
never becomes -inf (log f of a logit near -3e38 would take it there): the first step is exact,
e^{m_0 + log f - a_1} underflows to exactly 0. h does not depend on m, so m carries no gradient;
log f_t does, through the rescale factor.

Init: the rwa's for its own weights (Glorot-uniform, zero biases, s0 ~ N(0, 1)); W_fx, W_fh
Glorot-uniform over (F+H, H), stored split as W_g and W_a; b_f = `forget_bias` (default 1.0:
f ≈ σ(1) = 0.73 per step at the start, i.e. a step's weight halves every ~2 steps; measured
against 3 and 5 on the adding problem and multi_copy, where 1 learned fastest on both:
BUILD_NOTES.md). With f ≡ 1 (b_f → +∞) the cell is the rwa.
"""

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.rwa import _enter, _leave, _mean, rwa
from seqjax.cells.base import (Cell, LoopParts, UpdateBackward, bias, check_dtype, fused_step,
                               glorot, matmul, positive_int)

_sg = jax.lax.stop_gradient


class RDAState(NamedTuple):
  h: jax.Array  # [*batch, H]  tanh(n / d)
  n: jax.Array  # [*batch, H]  Σ_i (Π_{j>i} f_j) z_i e^{a_i - m}
  d: jax.Array  # [*batch, H]  Σ_i (Π_{j>i} f_j) e^{a_i - m}
  m: jax.Array  # [*batch, H]  running max of the discounted log weights


def check_forget_bias(forget_bias) -> float:
  if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real) \
      or not math.isfinite(forget_bias):
    raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
  return float(forget_bias)


def rda(hidden_size: int, dtype=None, *, forget_bias: float = 1.0) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params, n, d, m and h stay float32.
  forget_bias: the initial value of b_f (σ(forget_bias) is the starting discount per step)."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)
  forget_bias = check_forget_bias(forget_bias)
  base = rwa(H, dtype)

  def init(key, input_size: int):
    F = positive_int("input_size", input_size)
    k_rwa, k_f = jax.random.split(key)
    W_f = glorot(k_f, (F + H, H), jnp.float32)
    return base.init(k_rwa, F) | {"W_fx": W_f[:F], "W_fh": W_f[F:],
                                  "b_f": jnp.full((H,), forget_bias, jnp.float32)}

  def initial_state(params, batch_shape=()):
    return RDAState(*base.initial_state(params, batch_shape))

  def project_x(params, x):
    def affine(w, b):
      p = matmul(x, params[w], dtype)
      return p + bias(params[b], p)
    return (affine("W_u", "b_u"), affine("W_gx", "b_g"), affine("W_fx", "b_f"),
            matmul(x, params["W_ax"], dtype))

  def project_h(params, h):
    # one [H, 3H] product instead of three [H, H] ones (the concatenation is loop-invariant)
    W = jnp.concatenate([params["W_gh"], params["W_fh"], params["W_ah"]], axis=1)
    return tuple(jnp.split(matmul(h, W, dtype), 3, axis=-1))

  def update(state, px, ph):
    z, log_f, a, _ = _terms(state, px, ph)
    n, d, m, _, _ = discount_and_add(state, z, a, log_f)
    h = jnp.tanh(n / d).astype(state.h.dtype)
    return RDAState(h=h, n=n, d=d, m=m), h

  parts = LoopParts(project_x, project_h, update, backward=_BACKWARD)
  step, fast_loop = fused_step(parts)
  return Cell(init, initial_state, step, "rda", H, fast_loop)


def discount_and_add(state, z, a, log_f):
  """One step of the discounted running sums in running-max form: (n, d, m, r, w) with
  r = e^{m_{t-1} + log f - m} the old sums' factor and w = e^{a - m} the new term's weight.
  m (and state.m) carry no gradient; log f does, through r."""
  lowest = jnp.finfo(a.dtype).min
  old = jnp.maximum(_sg(state.m) + log_f, lowest)  # never -inf: no -inf - (-inf) below
  m = _sg(jnp.maximum(old, a))
  r, w = jnp.exp(old - m), jnp.exp(a - m)
  return state.n * r + z * w, state.d * r + w, m, r, w


def _terms(state, px, ph):
  """(z, log f, a, tanh g) of one step, in the accumulators' precision."""
  (u, gx, fx, ax), (gh, fh, ah) = px, ph
  acc = state.n.dtype
  tg = jnp.tanh(gx + gh)
  log_f = jax.nn.log_sigmoid((fx + fh).astype(acc))
  return (u * tg).astype(acc), log_f, (ax + ah).astype(acc), tg


# The backward pass by hand, as the rwa's (seqjax.cells.rwa): carry G = dd + dn·q (q = n/d)
# instead of dd, and write every term as a product of well-conditioned factors. With
# r = e^{m_{t-1} + log f - m_t}, w = e^{a - m_t}, α = w/d, β = d_{t-1} r / d = 1 - α and
# δ = z - q_{t-1} (so q_t = q_{t-1} + α δ and z - q_t = β δ):
#   dz = dn·w,   da = w·(dn·δ·β + G),   dn_{t-1} = dn·r,   G_{t-1} = r·(G - dn·δ·α)
# (the rwa's, with the discount inside r), and for the discount:
#   d(log f) = r·(dn·n_{t-1} + dd·d_{t-1}) = r·d_{t-1}·(dn·(q_{t-1} - q_t) + G)
#            = r·d_{t-1}·(G - dn·δ·α) = d_{t-1}·G_{t-1},
# where autodiff would subtract dn·n_{t-1} ≈ -dd·d_{t-1} (nearly equal where attention
# saturates). Then d(logit of f) = d(log f)·σ(-logit) (d log σ(x)/dx = 1 - σ(x) = σ(-x)).
# q's own use adds dq/d to dn and nothing to G.

def _step_back(state, px, ph, carried, dh_out):
  (u, gx, fx, ax), (gh, fh, ah) = px, ph
  z, log_f, a, tg = _terms(state, px, ph)
  # as in update: m carries no gradient, also when this rule is differentiated (Hessians)
  n, d, _, r, w = discount_and_add(state, z, a, log_f)
  h = jnp.tanh(n / d)
  alpha, beta = w / d, state.d * r / d
  delta = z - _mean(state)
  dq = (carried.h + dh_out) * (1 - h * h)
  dn, G = carried.n + dq / d, carried.d
  G_prev = r * (G - dn * delta * alpha)
  dz = dn * w
  da = w * (dn * delta * beta + G)
  df = state.d * G_prev * jax.nn.sigmoid(-(fx + fh).astype(log_f.dtype))
  dg = dz * u * (1 - tg * tg)
  zeros = jnp.zeros_like(carried.h)
  carried_prev = RDAState(h=zeros, n=dn * r, d=G_prev, m=zeros)
  dpx = ((dz * tg).astype(u.dtype), dg.astype(gx.dtype), df.astype(fx.dtype), da.astype(ax.dtype))
  return carried_prev, dpx, (dg.astype(gh.dtype), df.astype(fh.dtype), da.astype(ah.dtype))


_BACKWARD = UpdateBackward(_enter, _step_back, _leave)
