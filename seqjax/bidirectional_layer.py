"""Bidirectional layers: a forward and a reverse scan over the same inputs, outputs concatenated.

  bi = seqjax.bidirectional(cells.lstm(64), num_layers=2)   # torch's bidirectional=True LSTM
  params = bi.init(key, input_size=F)
  final_states, hs = bi.apply(params, xs, lengths)          # hs [*batch, T, 2·64]

Layer k + 1 reads layer k's concatenated outputs. The reverse scan runs each sequence from its
last valid step back to step 0 (`seqjax.scan(..., reverse=True)`), so with `lengths` the two
directions see exactly the valid steps, as torch's packed sequences do.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, positive_int
from seqjax.scanning import scan


class Bidirectional(NamedTuple):
  """init(key, input_size) -> params: a tuple with one (params_fwd, params_bwd) pair per layer.
  apply(params, xs [*batch, T, F], lengths=None, *, unroll=None, remat=False)
    -> (final_states, hs): final_states one (state_fwd, state_bwd) pair per layer (the reverse
    scan's is its state after step 0), hs [*batch, T, H_fwd + H_bwd] the top layer's forward and
    reverse outputs concatenated (0 past each sequence's length).
  """
  init: Callable
  apply: Callable
  cell_fwd: Cell
  cell_bwd: Cell
  num_layers: int

  @property
  def name(self) -> str:
    return f"bi-{self.cell_fwd.name}" + ("" if self.cell_bwd == self.cell_fwd
                                          else f"/{self.cell_bwd.name}")

  @property
  def hidden_size(self) -> int:
    """The width of hs: H_fwd + H_bwd."""
    return self.cell_fwd.hidden_size + self.cell_bwd.hidden_size


def bidirectional(cell_fwd: Cell, cell_bwd: Cell = None, num_layers: int = 1) -> Bidirectional:
  """A bidirectional layer (stacked num_layers deep) of cell_fwd over time and cell_bwd against
  it; cell_bwd=None: a second cell like cell_fwd (its own params)."""
  cell_bwd = cell_fwd if cell_bwd is None else cell_bwd
  for what, cell in (("cell_fwd", cell_fwd), ("cell_bwd", cell_bwd)):
    if not isinstance(cell, Cell):
      raise TypeError(f"bidirectional: {what} must be a seqjax Cell, got {type(cell).__name__}")
  num_layers = positive_int("num_layers", num_layers)
  width = cell_fwd.hidden_size + cell_bwd.hidden_size

  def init(key, input_size: int):
    keys = jax.random.split(key, 2 * num_layers).reshape(num_layers, 2)
    sizes = (input_size,) + (width,) * (num_layers - 1)
    return tuple((cell_fwd.init(k[0], f), cell_bwd.init(k[1], f)) for k, f in zip(keys, sizes))

  def apply(params, xs, lengths=None, *, unroll=None, remat=False):
    if len(params) != num_layers:
      raise ValueError(f"bidirectional: params for {len(params)} layers; this one has "
                       f"{num_layers}")
    hs, finals = xs, []
    for p_fwd, p_bwd in params:
      s_fwd, h_fwd = scan(cell_fwd, p_fwd, hs, lengths=lengths, unroll=unroll, remat=remat)
      s_bwd, h_bwd = scan(cell_bwd, p_bwd, hs, lengths=lengths, unroll=unroll, remat=remat,
                          reverse=True)
      finals.append((s_fwd, s_bwd))
      hs = jnp.concatenate([h_fwd, h_bwd], axis=-1)
    return tuple(finals), hs

  return Bidirectional(init, apply, cell_fwd, cell_bwd, num_layers)
