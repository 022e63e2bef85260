"""LSTM with PyTorch/cuDNN gate order i, f, g, o (weights convert by transposing).

  [i, f, g, o] = x_t W_x + h_{t-1} W_h + b
  c_t = σ(f) c_{t-1} + σ(i) tanh(g)
  h_t = σ(o) tanh(c_t),        h_0 = c_0 = 0

Init: W_x Glorot-uniform per gate, W_h orthogonal per gate, b = 0 except the forget
gate's 1.0 (Jozefowicz et al. 2015; what Keras and the RWA paper's LSTM use).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import (Cell, LoopParts, check_dtype, positive_int, glorot_blocks,
                               orthogonal_blocks, single_matrix_projections, state_dtype,
                               fused_step)

FORGET_BIAS = 1.0


class LSTMState(NamedTuple):
  h: jax.Array  # [*batch, H]
  c: jax.Array  # [*batch, H]


def lstm(hidden_size: int, dtype=None) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params and state stay float32."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)

  def init(key, input_size: int):
    F = positive_int("input_size", input_size)
    kx, kh = jax.random.split(key)
    b = jnp.zeros((4 * H,), jnp.float32).at[H:2 * H].set(FORGET_BIAS)
    return {"W_x": glorot_blocks(kx, F, H, 4),
            "W_h": orthogonal_blocks(kh, H, 4),
            "b": b}

  def initial_state(params, batch_shape=()):
    zeros = jnp.zeros((*batch_shape, H), state_dtype(params["W_h"].dtype))
    return LSTMState(h=zeros, c=zeros)

  project_x, project_h = single_matrix_projections(dtype)

  def update(state, px, ph):
    i, f, g, o = jnp.split(px + ph, 4, axis=-1)
    c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    c, h = c.astype(state.c.dtype), h.astype(state.h.dtype)
    return LSTMState(h=h, c=c), h

  parts = LoopParts(project_x, project_h, update)
  step, fast_loop = fused_step(parts)
  return Cell(init, initial_state, step, "lstm", H, fast_loop)
