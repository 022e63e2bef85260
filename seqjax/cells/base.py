"""The `Cell` record shared by every recurrent cell, and the initialisers they use."""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

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
  project_h(params, s.h)), where only the two projections touch params.

  `seqjax.scan` uses the split to differentiate the time loop by hand: one matmul per step in
  the backward loop, the weight gradients from all steps at once after it (`seqjax._fused`).
  """
  project_x: Callable  # (params, x [..., F]) -> pytree of [..., K] (any leading dims)
  project_h: Callable  # (params, h [..., H]) -> pytree of [..., K], affine in h
  update: Callable     # (state, px, ph) -> (new_state, h)
  backward: Optional[UpdateBackward] = None  # default: jax.vjp of update


class Cell(NamedTuple):
  """A recurrent cell as pure functions (the same idea as `optax.GradientTransformation`).

  init(key, input_size) -> params
  initial_state(params, batch_shape) -> state
  step(params, state, x_t) -> (state, h_t);  x_t: [*batch_shape, F] -> h_t: [*batch_shape, H]
  parts: optional `LoopParts` of `step` (cells written elsewhere can leave it out).
  layers: a stack's cells, bottom first (empty for a single cell).
  """
  init: Callable[..., Params]
  initial_state: Callable[..., State]
  step: Callable[..., tuple]
  name: str
  hidden_size: int
  parts: Optional[LoopParts] = None
  layers: tuple = ()


def single_matrix_projections(dtype=None):
  """project_x = x W_x + b and project_h = h W_h: the projections of cells whose gates all sum
  one input product and one hidden product (rnn, lstm)."""
  def project_x(params, x):
    px = matmul(x, params["W_x"], dtype)
    return px + bias(params["b"], px)

  def project_h(params, h):
    return matmul(h, params["W_h"], dtype)

  return project_x, project_h


def autodiff_backward(cell: "Cell") -> "Cell":
  """The same cell without its hand-written backward pass: `seqjax.scan` then differentiates it
  with JAX's own rules, which also gives forward mode (`jax.jvp`, `jax.jacfwd`)."""
  if cell.layers:
    from seqjax.cells.stack import stack
    return stack([autodiff_backward(c) for c in cell.layers])
  return cell._replace(parts=None)


def step_from_parts(parts: LoopParts):
  """The step that `parts` describe: the one definition both scan paths run."""
  def step(params, state, x_t):
    return parts.update(state, parts.project_x(params, x_t), parts.project_h(params, state.h))
  step.parts = parts  # seqjax.scan takes the parts' fast path only while step is this one
  return step


def check_size(what: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{what} must be a positive int, got {value!r}")
  return value


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
