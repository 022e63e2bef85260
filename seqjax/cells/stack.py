"""Stacked cells: layer k's output h is layer k+1's input (the `optax.chain` of cells)."""

from typing import Sequence

import jax

from seqjax.cells.base import Cell


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

  step.layers = layers  # seqjax.scan runs layer by layer only while step is this one
  name = "+".join(c.name for c in layers)
  return Cell(init, initial_state, step, name, layers[-1].hidden_size, layers=layers)
