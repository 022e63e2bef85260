"""Stacked cells: layer k's output h is layer k+1's input (the `optax.chain` of cells)."""

from typing import Sequence

import jax

from seqjax import _timeloop
from seqjax.cells.base import Cell, FastLoop


def stack(layers: Sequence[Cell]) -> Cell:
  """A Cell whose params and state are tuples with one entry per layer; `step` returns the top h."""
  layers = tuple(layers)
  if not layers or not all(isinstance(c, Cell) for c in layers):
    raise ValueError(f"stack needs a non-empty sequence of Cells, got {layers!r}")

  def init(key, input_size: int):
    keys = jax.random.split(key, len(layers))
    sizes = (input_size,) + tuple(c.hidden_size for c in layers[:-1])
    return tuple(c.init(k, f) for c, k, f in zip(layers, keys, sizes))

  def initial_state(params, batch_shape=()):
    return tuple(c.initial_state(p, batch_shape) for c, p in zip(layers, params))

  def step(params, state, x_t):
    new_state = []
    h = x_t
    for c, p, s in zip(layers, params, state):
      s, h = c.step(p, s, h)
      new_state.append(s)
    return tuple(new_state), h

  def run_layer_by_layer(params, xs_T, state0, active_T, unroll, resets=None):
    # Each layer's output sequence is the next one's input: equal to stepping the whole stack
    # per time step, and every layer runs its own fast loop (a reset resets every layer).
    final_states, hs_T = [], xs_T
    for k, (c, p, s) in enumerate(zip(layers, params, state0)):
      s, hs_T = _timeloop.run(c, p, hs_T, s, active_T, unroll,
                              _timeloop.layer_resets(resets, k))
      final_states.append(s)
    return tuple(final_states), hs_T

  name = "+".join(c.name for c in layers)
  return Cell(init, initial_state, step, name, layers[-1].hidden_size,
              FastLoop(step, run_layer_by_layer, takes_resets=True), layers)
