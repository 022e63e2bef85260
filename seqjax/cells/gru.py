"""GRU with PyTorch/cuDNN gate order r, z, n and PyTorch's two biases.

  r = σ(x W_xr + b_xr + h W_hr + b_hr)
  z = σ(x W_xz + b_xz + h W_hz + b_hz)
  n = tanh(x W_xn + b_xn + r (h W_hn + b_hn))
  h_t = (1 - z) n + z h_{t-1},      h_0 = 0

Init: W_x Glorot-uniform per gate, W_h orthogonal per gate, biases 0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import (Cell, LoopParts, bias, check_dtype, positive_int, glorot_blocks,
                               matmul, orthogonal_blocks, state_dtype, fused_step)


class GRUState(NamedTuple):
  h: jax.Array  # [*batch, H]


def gru(hidden_size: int, dtype=None) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params and state stay float32."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)

  def init(key, input_size: int):
    F = positive_int("input_size", input_size)
    kx, kh = jax.random.split(key)
    return {"W_x": glorot_blocks(kx, F, H, 3),
            "W_h": orthogonal_blocks(kh, H, 3),
            "b_x": jnp.zeros((3 * H,), jnp.float32),
            "b_h": jnp.zeros((3 * H,), jnp.float32)}

  def initial_state(params, batch_shape=()):
    return GRUState(h=jnp.zeros((*batch_shape, H), state_dtype(params["W_h"].dtype)))

  def project_x(params, x):
    gx = matmul(x, params["W_x"], dtype)
    return gx + bias(params["b_x"], gx)

  def project_h(params, h):
    gh = matmul(h, params["W_h"], dtype)
    return gh + bias(params["b_h"], gh)

  def update(state, gx, gh):
    xr, xz, xn = jnp.split(gx, 3, axis=-1)
    hr, hz, hn = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = ((1 - z) * n + z * state.h).astype(state.h.dtype)
    return GRUState(h), h

  parts = LoopParts(project_x, project_h, update)
  step, fast_loop = fused_step(parts)
  return Cell(init, initial_state, step, "gru", H, fast_loop)
