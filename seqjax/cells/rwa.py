"""Recurrent weighted average (Ostmeyer & Cowell 2017), in the running-max form.

  u_t = x_t W_u + b_u
  g_t = x_t W_gx + h_{t-1} W_gh + b_g
  a_t = x_t W_ax + h_{t-1} W_ah          (no bias: it cancels in n/d)
  z_t = u_t tanh(g_t)
  h_t = tanh(n_t / d_t),   n_t = Σ_{i≤t} z_i e^{a_i},   d_t = Σ_{i≤t} e^{a_i},   h_0 = tanh(s0)

Stable form (paper, appendix B): keep m_t = max(m_{t-1}, a_t) and store n, d scaled by e^{-m_t}:

  n_t = n_{t-1} e^{m_{t-1} - m_t} + z_t e^{a_t - m_t}
  d_t = d_{t-1} e^{m_{t-1} - m_t} +     e^{a_t - m_t}

Every exponent is ≤ 0, so nothing overflows, and d_t ≥ 1 from the first step on, so n/d is never
0/0. m_0 is the dtype's most negative finite number (not -inf: no inf - inf can arise, and the
state stays finite), so the first step is exact: e^{m_0 - a_1} underflows to exactly 0.
h does not depend on m, so m carries no gradient (stop_gradient is exact, and keeps max()'s
tie-breaking out of the backward pass).

Init as the authors' code: Glorot-uniform weights (W_u over (F, H); W_g and W_a over (F+H, H),
stored split into input rows and hidden rows), zero biases, s0 ~ N(0, 1).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import (Cell, LoopParts, UpdateBackward, bias, check_dtype, positive_int,
                               glorot, matmul, state_dtype, fused_step)


class RWAState(NamedTuple):
  h: jax.Array  # [*batch, H]  tanh(n / d)
  n: jax.Array  # [*batch, H]  Σ z e^{a - m}
  d: jax.Array  # [*batch, H]  Σ e^{a - m}
  m: jax.Array  # [*batch, H]  running max of a


def rwa(hidden_size: int, dtype=None) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params, n, d, m and h stay float32."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)

  def init(key, input_size: int):
    F = positive_int("input_size", input_size)
    ku, kg, ka, ks = jax.random.split(key, 4)
    W_g = glorot(kg, (F + H, H), jnp.float32)
    W_a = glorot(ka, (F + H, H), jnp.float32)
    return {"W_u": glorot(ku, (F, H), jnp.float32),
            "b_u": jnp.zeros((H,), jnp.float32),
            "W_gx": W_g[:F], "W_gh": W_g[F:],
            "b_g": jnp.zeros((H,), jnp.float32),
            "W_ax": W_a[:F], "W_ah": W_a[F:],
            "s0": jax.random.normal(ks, (H,), jnp.float32)}

  def initial_state(params, batch_shape=()):
    dtype = state_dtype(params["s0"].dtype)
    shape = (*batch_shape, H)
    return RWAState(h=jnp.broadcast_to(jnp.tanh(params["s0"]).astype(dtype), shape),
                    n=jnp.zeros(shape, dtype),
                    d=jnp.zeros(shape, dtype),
                    m=jnp.full(shape, jnp.finfo(dtype).min, dtype))

  def project_x(params, x):
    u, g = matmul(x, params["W_u"], dtype), matmul(x, params["W_gx"], dtype)
    return u + bias(params["b_u"], u), g + bias(params["b_g"], g), matmul(x, params["W_ax"], dtype)

  def project_h(params, h):
    # one [H, 2H] product instead of two [H, H] ones (the concatenation is loop-invariant)
    W = jnp.concatenate([params["W_gh"], params["W_ah"]], axis=1)
    gh, ah = jnp.split(matmul(h, W, dtype), 2, axis=-1)
    return gh, ah

  def update(state, px, ph):
    acc = state.n.dtype  # the accumulators' precision (float32 at least)
    (u, gx, ax), (gh, ah) = px, ph
    g = gx + gh
    a = (ax + ah).astype(acc)
    z = (u * jnp.tanh(g)).astype(acc)
    m = jax.lax.stop_gradient(jnp.maximum(state.m, a))
    rescale = jnp.exp(jax.lax.stop_gradient(state.m) - m)
    w = jnp.exp(a - m)
    n = state.n * rescale + z * w
    d = state.d * rescale + w
    h = jnp.tanh(n / d).astype(state.h.dtype)
    return RWAState(h=h, n=n, d=d, m=m), h

  parts = LoopParts(project_x, project_h, update, backward=_BACKWARD)
  step, fast_loop = fused_step(parts)
  return Cell(init, initial_state, step, "rwa", H, fast_loop)


# The backward pass by hand. Autodiff of n/d forms ∂L/∂a from two nearly opposite terms
# (dn·z and dd ≈ -dn·q), which leaves eps-sized noise where the attention saturates. With
# q = n/d, α = w/d, β = d_{t-1} r / d = 1 - α and δ = z - q_{t-1}, carry G = dd + dn·q instead
# of dd; then every term is a product of well-conditioned factors:
#   dz = dn·w,   da = w·(dn·δ·β + G),   dn_{t-1} = dn·r,   G_{t-1} = r·(G - dn·δ·α),
# and q's own use adds dq/d to dn and nothing to G.

def _mean(state):
  """q = n / d (0 where nothing has been accumulated yet)."""
  seen = state.d > 0
  return jnp.where(seen, state.n / jnp.where(seen, state.d, 1), 0)


def _enter(state, d_state):
  return d_state._replace(d=d_state.d + d_state.n * _mean(state))


def _leave(state, carried):
  return carried._replace(d=carried.d - carried.n * _mean(state))


def _step_back(state, px, ph, carried, dh_out):
  (u, gx, ax), (gh, ah) = px, ph
  acc = state.n.dtype
  tg = jnp.tanh(gx + gh)
  a = (ax + ah).astype(acc)
  z = (u * tg).astype(acc)
  m = jax.lax.stop_gradient(jnp.maximum(state.m, a))  # as in update: m carries no gradient,
  r = jnp.exp(jax.lax.stop_gradient(state.m) - m)     # also when this rule is differentiated
  w = jnp.exp(a - m)                                  # (Hessian-vector products)
  d = state.d * r + w
  h = jnp.tanh((state.n * r + z * w) / d)
  alpha, beta = w / d, state.d * r / d
  delta = z - _mean(state)
  dq = (carried.h + dh_out) * (1 - h * h)
  dn, G = carried.n + dq / d, carried.d
  dz = dn * w
  da = w * (dn * delta * beta + G)
  dg = dz * u * (1 - tg * tg)
  zeros = jnp.zeros_like(carried.h)
  carried_prev = RWAState(h=zeros, n=dn * r, d=r * (G - dn * delta * alpha), m=zeros)
  dpx = ((dz * tg).astype(u.dtype), dg.astype(gx.dtype), da.astype(ax.dtype))
  return carried_prev, dpx, (dg.astype(gh.dtype), da.astype(ah.dtype))


_BACKWARD = UpdateBackward(_enter, _step_back, _leave)
