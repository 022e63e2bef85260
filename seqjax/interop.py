"""Flax adapters: a seqjax `Cell` as a `flax.linen` or `flax.nnx` RNN cell.

  rnn = nn.RNN(LinenCell(cells.rwa(64)))                                  # flax.linen
  rnn = nnx.RNN(NnxCell(cells.rwa(64), input_size=2, rngs=nnx.Rngs(0)))   # flax.nnx

Both hold exactly the param pytree `cell.init` returns (a dict; a tuple of dicts for a stack),
initialised by `cell.init` itself, and their carry is exactly the seqjax state, so an adapter over
T steps computes what `seqjax.scan(cell, params, xs)` computes: the same outputs and, with
`return_carry=True`, the same final state. `initial_carry` takes a seqjax state (e.g. a previous
call's final carry, to stream a long sequence in pieces).

Flax's `seq_lengths` keeps its own meaning: the returned carry is the state after each
sequence's last valid step, but the outputs past a sequence's length are not zeroed (seqjax.scan
zeroes them), and a length of 0 gives the state after all T steps (flax selects step
`length - 1`), where seqjax.scan gives the initial state.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from seqjax.cells.base import Cell


def _check_cell(cell):
  if not isinstance(cell, Cell):
    raise TypeError(f"expected a seqjax Cell (e.g. cells.rwa(64)), got {type(cell).__name__}")


class LinenCell(nn.RNNCellBase):
  """A seqjax cell as a `flax.linen` RNN cell, for `nn.RNN` and `nn.Bidirectional`.

  Params: the one variable `params/cell` of this module is the very pytree `cell.init(key, F)`
  returns (created by that call, F = the input's last axis). Inside `nn.RNN` this module is named
  "cell", so `variables["params"]["cell"]["cell"]` is the seqjax param dict (tuple for a stack):
  read it out or drop one in unchanged.

  Carry: the seqjax state, NamedTuple of [*batch, H] arrays (a tuple of them for a stack).

  Attributes:
    cell: the seqjax `Cell` (a stack included).
  """
  cell: Cell

  def __post_init__(self):
    _check_cell(self.cell)
    super().__post_init__()

  @nn.compact
  def __call__(self, carry, x):
    """One step. carry: the seqjax state; x: [*batch, F] -> (state, h [*batch, H])."""
    params = self.param("cell", lambda key: self.cell.init(key, x.shape[-1]))
    return self.cell.step(params, carry, x)

  def initialize_carry(self, rng, input_shape):
    """`cell.initial_state(params, batch)` for inputs of shape [*batch, F] (`rng` is unused).

    Some initial states depend on the params (RWA's h_0 = tanh(s0)), so this reads them, which
    needs a bound module: nn.RNN calls it on its bound cell. During init flax asks for the carry
    before the first step has run, so the params are created here in that case (by `cell.init`,
    as `__call__` would); the scanned steps then find them already in place. On its own the
    module can make its params the same way: `LinenCell(cell).init(key, None, (*batch, F),
    method="initialize_carry")`.
    """
    del rng
    if self.scope is None:
      raise ValueError(
          "LinenCell.initialize_carry reads the cell's params, so it needs a bound module (as "
          "inside nn.RNN, or LinenCell(cell).bind(variables)); without one, build the carry "
          "with cell.initial_state(params, batch_shape)")
    if not self.has_variable("params", "cell"):
      self.put_variable("params", "cell",
                        self.cell.init(self.make_rng("params"), input_shape[-1]))
    params = self.get_variable("params", "cell")
    return self.cell.initial_state(params, tuple(input_shape[:-1]))

  @property
  def num_feature_axes(self) -> int:
    return 1


class NnxCell(nnx.RNNCellBase):
  """A seqjax cell as a `flax.nnx` RNN cell, for `nnx.RNN`.

  Params: `self.params` has the structure of `cell.init(rngs.params(), input_size)` (same keys
  and shapes; a tuple of dicts for a stack) with every array held in its own `nnx.Param`, so nnx
  optimizers, `nnx.grad` and `nnx.jit` treat it like any module's weights. `get_params()` returns
  the plain pytree and `set_params(p)` writes one in.

  Carry: the seqjax state, exactly `cell.initial_state(params, batch)` at the start.

  Args:
    cell: the seqjax `Cell` (a stack included).
    input_size: F, the last axis of the inputs.
    rngs: the params key is `rngs.params()`; default `nnx.Rngs(0)`.
  """

  def __init__(self, cell: Cell, input_size: int, *, rngs: nnx.Rngs | None = None):
    _check_cell(cell)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    self.cell = nnx.static(cell)
    self.params = nnx.data(jax.tree.map(nnx.Param, cell.init(rngs.params(), input_size)))

  def get_params(self):
    """The params as the plain pytree of arrays `cell.init` returns."""
    return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

  def set_params(self, params):
    """Writes `params` (the pytree `cell.init` returns: same structure and shapes) in place."""
    old = jax.tree.structure(self.params, is_leaf=_is_variable)
    if jax.tree.structure(params) != old:
      raise ValueError(f"params must have the structure {old}; got {jax.tree.structure(params)}")
    variables = jax.tree.leaves(self.params, is_leaf=_is_variable)
    values = [jnp.asarray(v) for v in jax.tree.leaves(params)]
    # Every shape is checked before anything is written, so a bad pytree leaves the cell as it was.
    for var, value in zip(variables, values):
      if value.shape != var.shape:
        raise ValueError(f"param shape {value.shape} does not match the cell's {var.shape}")
    for var, value in zip(variables, values):
      var.set_value(value)

  def __call__(self, carry, x):
    """One step. carry: the seqjax state; x: [*batch, F] -> (state, h [*batch, H])."""
    return self.cell.step(self.get_params(), carry, x)

  def initialize_carry(self, input_shape, rngs=None):
    """`cell.initial_state(params, batch)` for inputs of shape [*batch, F] (`rngs` is unused)."""
    del rngs
    return self.cell.initial_state(self.get_params(), tuple(input_shape[:-1]))

  @property
  def num_feature_axes(self) -> int:
    return 1


def _is_variable(x):
  return isinstance(x, nnx.Variable)
