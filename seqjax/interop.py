"""Bridges: a seqjax `Cell` as a `flax.linen` or `flax.nnx` RNN cell or whole-sequence module,
and PyTorch weights in and out (`from_torch`, `to_torch`: seqjax.torch_weights).

  rnn = nn.RNN(LinenCell(cells.rwa(64)))                                  # flax.linen
  rnn = nnx.RNN(NnxCell(cells.rwa(64), input_size=2, rngs=nnx.Rngs(0)))   # flax.nnx
  rnn = LinenRNN(cells.rwa(64))       # xs [B, T, F] -> hs: seqjax.scan, its fast loop, in Flax
  rnn = NnxRNN(cells.rwa(64), input_size=2, rngs=nnx.Rngs(0))

Both hold exactly the param pytree `cell.init` returns (a dict; a tuple of dicts for a stack),
initialised by `cell.init` itself, and their carry is a seqjax state, so an adapter over T steps
computes what `seqjax.scan(cell, params, xs)` computes: the same outputs and, with
`return_carry=True`, the same final state. `initial_carry` takes a seqjax state (e.g. a previous
call's final carry, to stream a long sequence in pieces, or `cell.initial_state(params, batch)`).

`initialize_carry` needs no params, as a Flax cell's: the carry it makes is the cell's start
state, except that the RWA's h_0 = tanh(s0) is left to the first step, which reads s0 from the
params it runs with. So such a carry stays valid after the params change, and s0 gets its
gradient through it. It marks this with m = -inf (the RWA's "no step yet" is m = the most negative
finite number; -inf additionally says "h_0 not given"); the adapters turn it into the RWA's own
start state before the first step, so the cell never sees -inf: pass such a carry to an adapter,
not to `cell.step`.

`carry_init(key, shape, dtype)`, as in Flax's cells, gives every leaf of the carry its values
(keys drawn per layer for c, then h, as Flax's LSTM cells draw them, then the other fields in
order). For the RWA that is n, d and m too: a state whose running average n/d has the weight
d·e^m, valid for any d > 0 (e.g. `ones`: h_{t-1} = 1 and a history averaging 1 with weight e).
`zeros` (flax's default carry_init, d = 0, m = 0) is a start with no history that is exact only
while the attention logits stay above about -87 (where e^a underflows in float32 and n/d becomes
0/0); leave carry_init unset for the RWA's own start.

Flax's `seq_lengths` keeps its own meaning: the returned carry is the state after each
sequence's last valid step, but the outputs past a sequence's length are not zeroed (seqjax.scan
zeroes them), and a length of 0 gives the state after all T steps (flax selects step
`length - 1`), where seqjax.scan gives the initial state.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx
from flax.typing import Initializer

from seqjax.cells import RWAState
from seqjax.cells.base import Cell
from seqjax.scanning import _reverse_valid, scan
from seqjax.torch_weights import from_torch, to_torch  # noqa: F401  (re-exported: interop.from_torch)

# The state fields whose `carry_init` keys come first, in the order Flax's LSTM cells draw them.
_CARRY_INIT_FIRST = ("c", "h")


def _check_cell(cell):
  if not isinstance(cell, Cell):
    raise TypeError(f"expected a seqjax Cell (e.g. cells.rwa(64)), got {type(cell).__name__}")


def _map_layers(fn, cell, params, *states):
  """fn(layer, params, *states) -> state for each single cell of a (possibly stacked) cell."""
  if cell.layers:
    return tuple(_map_layers(fn, c, p, *s) for c, p, *s in zip(cell.layers, params, *states))
  return fn(cell, params, *states)


def _reads_s0(params, state):
  """Whether this layer is an RWA, whose start h_0 = tanh(s0) comes from its params."""
  return isinstance(state, RWAState) and isinstance(params, dict) and "s0" in params


def _start_carry(cell, input_shape, carry_init, draw_keys):
  """The param-free start carry for inputs of shape [*batch, F] (see the module docstring).

  draw_keys(n) -> n keys for carry_init (called only when carry_init is given).
  """
  input_shape = tuple(input_shape)
  if not input_shape:
    raise ValueError("input_shape must be (*batch, F) with F the input size, got ()")
  batch, F = input_shape[:-1], input_shape[-1]

  def refuse_param_reads(layer, zeros, state, state_ones):
    # A start state that changes with the params' values cannot be made without them. The RWA's
    # h is the one such leaf the adapters know how to defer to the first step.
    strip = (lambda s: s._replace(h=None)) if _reads_s0(zeros, state) else (lambda s: s)
    if any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(strip(state)),
                                                    jax.tree.leaves(strip(state_ones)))):
      raise ValueError(
          f"cell {layer.name!r}: its initial_state reads its params' values, so the adapter "
          "cannot build its carry without them; pass initial_carry=cell.initial_state(params, "
          "batch_shape)")
    return state

  def defer_h0(layer, zeros, state):
    return state._replace(m=jnp.full_like(state.m, -jnp.inf)) if _reads_s0(zeros, state) else state

  shapes = jax.eval_shape(lambda key: cell.init(key, F), jax.random.key(0))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  # Checked on concrete values (also under jit), with one unbatched state: it is cheap.
  with jax.ensure_compile_time_eval():
    zeros_now, ones = (jax.tree.map(lambda a: fill(a.shape, a.dtype), shapes)
                       for fill in (jnp.zeros, jnp.ones))
    _map_layers(refuse_param_reads, cell, zeros_now, cell.initial_state(zeros_now, ()),
                cell.initial_state(ones, ()))
  carry = _map_layers(defer_h0, cell, zeros, cell.initial_state(zeros, batch))
  if carry_init is None:
    return carry

  states = []
  _map_layers(lambda layer, params, state: states.append(state), cell, zeros, carry)
  keys = iter(draw_keys(len(jax.tree.leaves(states))))

  def fill(layer, params, state):
    def draw(leaf):
      return carry_init(next(keys), leaf.shape, leaf.dtype)
    if not hasattr(state, "_fields"):
      return jax.tree.map(draw, state)
    # Flax's order first (c, then h), then the other fields as the state lists them.
    names = sorted(state._fields, key=lambda f: _CARRY_INIT_FIRST.index(f)
                   if f in _CARRY_INIT_FIRST else len(_CARRY_INIT_FIRST))
    return state._replace(**{f: jax.tree.map(draw, getattr(state, f)) for f in names})

  return _map_layers(fill, cell, zeros, carry)


def _start_deferred(cell, params, carry):
  """The carry with every deferred RWA start (m = -inf) replaced by the RWA's own start state,
  h_0 = tanh(s0) from these params."""
  def start(layer, params, state):
    if not _reads_s0(params, state):
      return state
    deferred = jnp.isneginf(state.m)
    h0 = jnp.broadcast_to(jnp.tanh(params["s0"]).astype(state.h.dtype), state.h.shape)
    return state._replace(h=jnp.where(deferred, h0, state.h),
                          m=jnp.where(deferred, jnp.finfo(state.m.dtype).min, state.m))
  return _map_layers(start, cell, params, carry)


class LinenCell(nn.RNNCellBase):
  """A seqjax cell as a `flax.linen` RNN cell, for `nn.RNN` and `nn.Bidirectional`.

  Params: the one variable `params/cell` of this module is the very pytree `cell.init(key, F)`
  returns (created by that call, F = the input's last axis). Inside `nn.RNN` this module is named
  "cell", so `variables["params"]["cell"]["cell"]` is the seqjax param dict (tuple for a stack):
  read it out or drop one in unchanged.

  Carry: a seqjax state, NamedTuple of [*batch, H] arrays (a tuple of them for a stack).

  Attributes:
    cell: the seqjax `Cell` (a stack included).
    carry_init: optional, as in Flax's cells: an initializer `(key, shape, dtype) -> array` for
      every leaf of the carry (see the module docstring); None (default): the cell's own start.
  """
  cell: Cell
  carry_init: Initializer | None = None

  def __post_init__(self):
    _check_cell(self.cell)
    super().__post_init__()

  @nn.compact
  def __call__(self, carry, x):
    """One step. carry: a seqjax state; x: [*batch, F] -> (state, h [*batch, H])."""
    params = self.param("cell", lambda key: self.cell.init(key, x.shape[-1]))
    return self.cell.step(params, _start_deferred(self.cell, params, carry), x)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """The start carry for inputs of shape [*batch, F]; needs no params (nor a bound module).

    `rng` is used only by `carry_init`.
    """
    def draw_keys(n):
      return [rng] if n == 1 else list(jax.random.split(rng, n))
    return _start_carry(self.cell, input_shape, self.carry_init, draw_keys)

  @property
  def num_feature_axes(self) -> int:
    return 1


class _NnxParams:
  """The params of an nnx module over a seqjax cell: `cell.init`'s pytree, one `nnx.Param` a leaf."""

  def _hold(self, cell: Cell, input_size: int, rngs: nnx.Rngs | None):
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


class NnxCell(_NnxParams, nnx.RNNCellBase):
  """A seqjax cell as a `flax.nnx` RNN cell, for `nnx.RNN`.

  Params: `self.params` has the structure of `cell.init(rngs.params(), input_size)` (same keys
  and shapes; a tuple of dicts for a stack) with every array held in its own `nnx.Param`, so nnx
  optimizers, `nnx.grad` and `nnx.jit` treat it like any module's weights. `get_params()` returns
  the plain pytree and `set_params(p)` writes one in.

  Carry: a seqjax state (a tuple of them for a stack).

  Args:
    cell: the seqjax `Cell` (a stack included).
    input_size: F, the last axis of the inputs.
    rngs: the params key is `rngs.params()`; default `nnx.Rngs(0)`.
  """

  def __init__(self, cell: Cell, input_size: int, *, rngs: nnx.Rngs | None = None):
    self._hold(cell, input_size, rngs)

  def __call__(self, carry, x):
    """One step. carry: a seqjax state; x: [*batch, F] -> (state, h [*batch, H])."""
    params = self.get_params()
    return self.cell.step(params, _start_deferred(self.cell, params, carry), x)

  def initialize_carry(self, input_shape, rngs=None, carry_init=None):
    """The start carry for inputs of shape [*batch, F]; reads no params.

    Args:
      input_shape: [*batch, F].
      rngs: an `nnx.Rngs` (its `carry` stream is used) or `nnx.RngStream`; needed only with
        carry_init.
      carry_init: optional initializer `(key, shape, dtype) -> array` for every leaf of the
        carry (see the module docstring); None (default): the cell's own start state.
    """
    def draw_keys(n):
      stream = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
      if stream is None:
        raise ValueError("initialize_carry with carry_init needs rngs (an nnx.Rngs or RngStream) "
                         "for the initializer's keys")
      return [stream() for _ in range(n)]
    return _start_carry(self.cell, input_shape, carry_init, draw_keys)

  @property
  def num_feature_axes(self) -> int:
    return 1


def _is_variable(x):
  return isinstance(x, nnx.Variable)


def _scan_sequence(module, params, xs, seq_lengths, initial_carry, return_carry, time_major,
                   reverse, keep_order):
  """LinenRNN's and NnxRNN's __call__: hs, or (final_state, hs) with return_carry."""
  cell = module.cell
  pick = lambda given, default: default if given is None else given  # noqa: E731
  time_major, reverse = pick(time_major, module.time_major), pick(reverse, module.reverse)
  keep_order = pick(keep_order, module.keep_order)
  if time_major:
    xs = jnp.moveaxis(xs, 0, -2)
  state = None if initial_carry is None else _start_deferred(cell, params, initial_carry)
  final_state, hs = scan(cell, params, xs, lengths=seq_lengths, initial_state=state,
                         unroll=module.unroll, remat=module.remat, reverse=reverse)
  if reverse and not keep_order:  # nn.RNN's order: the outputs in the order they were computed
    hs = _reverse_valid(hs, None if seq_lengths is None else jnp.asarray(seq_lengths))
  if time_major:
    hs = jnp.moveaxis(hs, -2, 0)
  return (final_state, hs) if pick(return_carry, module.return_carry) else hs


class LinenRNN(nn.Module):
  """A whole sequence through a seqjax cell as one `flax.linen` module: `seqjax.scan` inside, so
  the cell's fast loop (the hand-written backward pass of rnn/lstm/gru/rwa) runs inside Flax.

  __call__(xs [*batch, T, F], *, seq_lengths=None, initial_carry=None, return_carry=None,
           time_major=None, reverse=None, keep_order=None, init_key=None)
    -> hs [*batch, T, H], or (final_state, hs) with return_carry.

  `seq_lengths` and the outputs mean what they mean in `seqjax.scan` (outputs past a sequence's
  length are 0, a length of 0 returns the initial state), which differs from `nn.RNN`'s.
  `init_key` (what `nn.Bidirectional` passes) is nn.RNN's key for a random start carry; the
  start here is the cell's own state, which needs none.
  `initial_carry`: a seqjax state, or a carry from `LinenCell(cell).initialize_carry`.

  Params: `variables["params"]["cell"]` is the pytree `cell.init(key, F)` returns — the same dict
  `nn.RNN(LinenCell(cell))` keeps one level deeper, at `variables["params"]["cell"]["cell"]`
  (nn.RNN names its cell module "cell"), so `{"params": rnn_vars["params"]["cell"]}` moves
  weights from one to the other.

  Attributes:
    cell: the seqjax `Cell` (a stack included).
    return_carry: default for `__call__`'s return_carry.
    unroll, remat: as in `seqjax.scan` (None: the backend's measured default unroll).
    time_major, reverse, keep_order: as in `nn.RNN` (call arguments override them): xs
      [T, *batch, F]; run each sequence from its last valid step back to step 0; with reverse,
      outputs at their time positions (True) or in the order computed. So
      `nn.Bidirectional(LinenRNN(c1), LinenRNN(c2))` equals `seqjax.bidirectional(c1, c2)`.
  """
  cell: Cell
  return_carry: bool = False
  unroll: int | None = None
  remat: bool = False
  time_major: bool = False
  reverse: bool = False
  keep_order: bool = False

  def __post_init__(self):
    _check_cell(self.cell)
    super().__post_init__()

  @nn.compact
  def __call__(self, xs, *, seq_lengths=None, initial_carry=None, return_carry=None,
               time_major=None, reverse=None, keep_order=None, init_key=None):
    del init_key  # see the class docstring
    params = self.param("cell", lambda key: self.cell.init(key, xs.shape[-1]))
    return _scan_sequence(self, params, xs, seq_lengths, initial_carry, return_carry,
                          time_major, reverse, keep_order)


class NnxRNN(_NnxParams, nnx.Module):
  """A whole sequence through a seqjax cell as one `flax.nnx` module (`seqjax.scan` inside, so
  the cell's fast loop runs in nnx). Params as `NnxCell`'s (`self.params`, `get_params`,
  `set_params`).

  __call__(xs [*batch, T, F], *, seq_lengths=None, initial_carry=None, return_carry=None,
           time_major=None, reverse=None, keep_order=None, rngs=None)
    -> hs [*batch, T, H], or (final_state, hs) with return_carry; `seq_lengths` and the outputs
    as in `seqjax.scan` (padded outputs 0). `initial_carry`: a seqjax state, or a carry from
    `NnxCell.initialize_carry`. `rngs` (what `nnx.Bidirectional` passes): nnx.RNN's stream for
    a random start carry; the start here is the cell's own state, which needs none.

  Args:
    cell: the seqjax `Cell` (a stack included).
    input_size: F, the last axis of the inputs.
    rngs: the params key is `rngs.params()`; default `nnx.Rngs(0)`.
    return_carry: default for `__call__`'s return_carry.
    unroll, remat: as in `seqjax.scan`.
    time_major, reverse, keep_order: as in `LinenRNN` (`nnx.Bidirectional` over two NnxRNN
      equals `seqjax.bidirectional`).
  """

  def __init__(self, cell: Cell, input_size: int, *, rngs: nnx.Rngs | None = None,
               return_carry: bool = False, unroll: int | None = None, remat: bool = False,
               time_major: bool = False, reverse: bool = False, keep_order: bool = False):
    self._hold(cell, input_size, rngs)
    self.return_carry, self.unroll, self.remat = return_carry, unroll, remat
    self.time_major, self.reverse, self.keep_order = time_major, reverse, keep_order

  def __call__(self, xs, *, seq_lengths=None, initial_carry=None, return_carry=None,
               time_major=None, reverse=None, keep_order=None, rngs=None):
    del rngs  # see the class docstring
    return _scan_sequence(self, self.get_params(), xs, seq_lengths, initial_carry, return_carry,
                          time_major, reverse, keep_order)
