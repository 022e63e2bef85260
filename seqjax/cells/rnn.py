"""Elman RNN:  h_t = tanh(x_t W_x + h_{t-1} W_h + b),  h_0 = 0.

Init (as Keras' SimpleRNN): W_x Glorot-uniform, W_h orthogonal, b = 0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import (Cell, LoopParts, check_dtype, positive_int, glorot, orthogonal,
                               single_matrix_projections, state_dtype, fused_step)


class RNNState(NamedTuple):
  h: jax.Array  # [*batch, H]


def rnn(hidden_size: int, dtype=None) -> Cell:
  """dtype: matmul operand precision (e.g. jnp.bfloat16); params and state stay float32."""
  H = positive_int("hidden_size", hidden_size)
  dtype = check_dtype(dtype)

  def init(key, input_size: int):
    F = positive_int("input_size", input_size)
    kx, kh = jax.random.split(key)
    return {"W_x": glorot(kx, (F, H), jnp.float32),
            "W_h": orthogonal(kh, (H, H), jnp.float32),
            "b": jnp.zeros((H,), jnp.float32)}

  def initial_state(params, batch_shape=()):
    return RNNState(h=jnp.zeros((*batch_shape, H), state_dtype(params["W_h"].dtype)))

  project_x, project_h = single_matrix_projections(dtype)

  def update(state, px, ph):
    h = jnp.tanh(px + ph).astype(state.h.dtype)
    return RNNState(h), h

  parts = LoopParts(project_x, project_h, update)
  step, fast_loop = fused_step(parts)
  return Cell(init, initial_state, step, "rnn", H, fast_loop)
