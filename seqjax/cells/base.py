"""The `Cell` record shared by every recurrent cell, and the initialisers they use."""

import operator
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _fused
from seqjax.cells import _alike

Params = Any  # a pytree of arrays: a dict for one cell, a tuple of dicts for a stack
State = Any   # a NamedTuple of [*batch_shape, H] arrays, or a tuple of those for a stack


class UpdateBackward(NamedTuple):
  """A cell's own reverse rule for `update`, for when autodiff of it loses precision.

  The backward loop carries the state's cotangent in the cell's own representation:
  enter(state, d_state) converts the standard cotangent of the last state into it,
  step(state_prev, px, ph, carried, dh_out) -> (carried_prev, dpx, dph) is one step back
  (`carried.h` stays the standard cotangent of h), leave(state, carried) converts back.
  """
  enter: Callable
  step: Callable
  leave: Callable


class LoopParts(NamedTuple):
  """A cell's step split as step(params, s, x) = update(s, project_x(params, x),
  project_h(params, s.h)), where only the two projections touch params — or, with
  update_takes_params=True, update(params, s, px, ph), which may read params too (a peephole
  weight, a layer-norm gain: small params, their gradients summed in the backward loop).

  `fused_step` turns it into the step and a time loop differentiated by hand: one matmul per
  step in the backward loop, the weight gradients from all steps at once after it (on CPU at
  large batches and past a memory cap, in the loop: `seqjax._fused.backward_layout`).
  """
  project_x: Callable  # (params, x [..., F]) -> pytree of [..., K] (any leading dims)
  project_h: Callable  # (params, h [..., H]) -> pytree of [..., K], affine in h
  update: Callable     # (state, px, ph) -> (new_state, h); or (params, state, px, ph) -> ...
  update_takes_params: bool = False
  backward: Optional[UpdateBackward] = None  # default: jax.vjp of update


class FastLoop(NamedTuple):
  """A faster way to run one particular `step` over time, for `seqjax.scan`.

  `seqjax.scan` runs `run` only while `cell.step is step` (the very function object this was
  built for). A cell whose step was replaced or wrapped — `cell._replace(step=...)`,
  `functools.wraps`, `jax.vmap` — therefore runs its own step, one call per time step.

  run(params, xs_T, state0, active_T, unroll) -> (final_state, hs_T), time-major:
    xs_T [T, *batch, F]; active_T None or bool [T, *batch] (False: a padded step — the state
    is carried unchanged, the output is 0, the input reaches nothing); hs_T [T, *batch, H].
  forward_mode: False when `run` has a hand-written backward pass (a `jax.custom_vjp`: reverse
    mode only; `seqjax.scan` refuses forward mode over it); `cells.autodiff_backward` then
    drops it.
  takes_resets: whether `run` also takes `resets=` (`seqjax._timeloop.Resets`: where the state
    goes back to its start), for `seqjax.scan(..., resets=)`; otherwise a scan with resets runs
    the step itself.
  """
  step: Callable
  run: Callable
  forward_mode: bool = True
  takes_resets: bool = False


class Cell(NamedTuple):
  """A recurrent cell as pure functions (the same idea as `optax.GradientTransformation`).

  init(key, input_size) -> params
  initial_state(params, batch_shape) -> state
  step(params, state, x_t) -> (state, h_t);  x_t: [*batch_shape, F] -> h_t: [*batch_shape, H]
  fast_loop: optional `FastLoop`: how `seqjax.scan` runs this `step` over time faster than
    step by step (cells written elsewhere leave it out; `cell._replace(step=...)` bypasses it).
  layers: a stack's cells, bottom first (empty for a single cell).

  Cells built alike are equal and hash alike (`cells.lstm(4) == cells.lstm(4)`; stacks, registry
  lookups and `fused_step` cells too): their functions come from the same code and close over
  alike values (`seqjax.cells._alike`). So a function jitted with the cell as a static argument
  compiles once for both. Cells that differ in any field (a replaced `step`) are unequal.
  """
  init: Callable[..., Params]
  initial_state: Callable[..., State]
  step: Callable[..., tuple]
  name: str
  hidden_size: int
  fast_loop: Optional[FastLoop] = None
  layers: tuple = ()

  def __eq__(self, other):
    return self is other or (isinstance(other, Cell) and _alike.alike(tuple(self), tuple(other)))

  def __ne__(self, other):
    return not self == other

  def __hash__(self):
    return _alike.cached_fingerprint(self)


def hand_written_backward(cell: Cell) -> bool:
  """Whether `seqjax.scan` differentiates `cell` (or a layer of it) by a hand-written pass."""
  fast = cell.fast_loop
  if fast is None or fast.step is not cell.step:
    return False
  if cell.layers:
    return any(map(hand_written_backward, cell.layers))
  return not fast.forward_mode


def single_matrix_projections(dtype=None):
  """project_x = x W_x + b and project_h = h W_h: the projections of cells whose gates all sum
  one input product and one hidden product (rnn, lstm)."""
  def project_x(params, x):
    px = matmul(x, params["W_x"], dtype)
    return px + bias(params["b"], px)

  def project_h(params, h):
    return matmul(h, params["W_h"], dtype)

  return project_x, project_h


def fused_step(parts: LoopParts):
  """(step, FastLoop) for a cell declared by its `parts`: the step they describe, and the time
  loop with the hand-written backward pass that runs exactly that step (`seqjax._fused`).

  Put both in the cell, `Cell(init, initial_state, step, name, H, fast_loop)`, and check its
  gradients through `seqjax.scan` against those of `cells.autodiff_backward(cell)` (README,
  "A fast cell of your own"; docs/library.md).
  """
  if parts.update_takes_params and parts.backward is not None:
    raise ValueError("LoopParts: a backward rule (UpdateBackward) is for an update that reads "
                     "no params; with update_takes_params=True leave backward=None")

  def step(params, state, x_t):
    px, ph = parts.project_x(params, x_t), parts.project_h(params, state.h)
    if parts.update_takes_params:
      return parts.update(params, state, px, ph)
    return parts.update(state, px, ph)
  return step, FastLoop(step, _fused.fused_run(parts), forward_mode=False, takes_resets=True)


def positive_int(what: str, value) -> int:
  """value as an int if it is a positive integer (Python or NumPy), else a ValueError naming it."""
  if not isinstance(value, (bool, np.bool_)):
    try:
      number = operator.index(value)
    except TypeError:
      number = None
    if number is not None and number >= 1:
      return number
  raise ValueError(f"{what} must be a positive int, got {value!r}")


def state_dtype(params_dtype):
  # Carries and accumulators stay at least float32 whatever precision the weights are in.
  return jnp.promote_types(params_dtype, jnp.float32)


glorot = jax.nn.initializers.glorot_uniform()
orthogonal = jax.nn.initializers.orthogonal()


def orthogonal_blocks(key, hidden_size: int, num_blocks: int, dtype=jnp.float32):
  """[H, num_blocks*H]: one independent orthogonal [H, H] block per gate."""
  keys = jax.random.split(key, num_blocks)
  return jnp.concatenate(
      [orthogonal(k, (hidden_size, hidden_size), dtype) for k in keys], axis=-1)


def glorot_blocks(key, fan_in: int, hidden_size: int, num_blocks: int, dtype=jnp.float32):
  """[F, num_blocks*H]: each gate's block Glorot-uniform over its own (F, H) fans."""
  keys = jax.random.split(key, num_blocks)
  return jnp.concatenate(
      [glorot(k, (fan_in, hidden_size), dtype) for k in keys], axis=-1)


def check_dtype(dtype):
  """None (products in the params' precision) or a float dtype for the matmul operands."""
  if dtype is None:
    return None
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    dt = None
  if dt is None or not jnp.issubdtype(dt, jnp.floating):
    raise ValueError(f"dtype must be None or a float dtype such as jnp.bfloat16, got {dtype!r}")
  return dt


def matmul(x, W, dtype=None):
  """x @ W. With a compute `dtype` (e.g. bfloat16) both operands are cast to it and the product
  accumulates and returns in float32 (at least): mixed precision with float32 params and state."""
  if dtype is None:
    return x @ W
  return jnp.matmul(x.astype(dtype), W.astype(dtype),
                    preferred_element_type=state_dtype(W.dtype))


def bias(b, like):
  """b [K] reshaped to broadcast against like [*batch, K] (explicit: no implicit rank promotion)."""
  return b.reshape((1,) * (like.ndim - 1) + b.shape)
