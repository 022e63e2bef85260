"""One cell over time-major inputs, padded steps masked: what every time loop of seqjax shares.

A padded step (active False) carries the state unchanged, outputs 0, and its input reaches
nothing: inputs are zeroed before the step sees them, so garbage in the padding (NaN, inf) cannot
put a NaN into the discarded branch of a `where` and from there into a gradient.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# Backends on which, for cells without a fast loop, the backward pass recomputes each step's
# internals from the carry instead of storing them. CPU, measured: 3x less memory than storing
# them, speed neutral on a quiet machine (+-4%). The built-in cells' hand-written pass keeps
# state and h·W_h per step instead: ~10% faster, ~2.6x the memory.
RECOMPUTE_STEP_ON = ("cpu",)


class Resets(NamedTuple):
  """Where the state goes back to its start: before step t, wherever at_T[t] is True, the
  state is `state` (scan's initial state). at_T: bool [T, *batch], False at padded steps."""
  at_T: jax.Array
  state: Any


def reset(resets, at, state):
  """The state before a step: `resets.state` where `at` (bool [*batch]), else `state`."""
  return state if at is None else select(at, resets.state, state)


def layer_resets(resets, k):
  """A stack's resets for its layer k (the same steps, that layer's start state)."""
  return None if resets is None else resets._replace(state=resets.state[k])


def expand(active, like):
  """The mask [*batch] (or [T, *batch]) reshaped to broadcast against a leaf with more dims."""
  return active.reshape(active.shape + (1,) * (like.ndim - active.ndim))


def mask_inputs(active, xs):
  """xs with padded steps' inputs set to 0 (xs itself when nothing is padded)."""
  if active is None:
    return xs
  return jnp.where(expand(active, xs), xs, jnp.zeros((), xs.dtype))


def select(active, new, old):
  """Per sequence: the tree `new` where active, else `old`."""
  return jax.tree.map(lambda a, b: jnp.where(expand(active, a), a, b), new, old)


def zero_inactive(active, tree):
  """The tree with its padded entries set to 0."""
  return jax.tree.map(lambda a: jnp.where(expand(active, a), a, jnp.zeros((), a.dtype)), tree)


def run(cell, params, xs_T, state0, active_T, unroll: int, resets: Resets = None):
  """(final_state, hs_T) of `cell` over xs_T [T, *batch, F] from state0; active_T: None or bool
  [T, *batch]; resets: None or `Resets`. The cell's fast loop while it belongs to the cell's
  step (and takes resets, if any), else the step itself."""
  fast = cell.fast_loop
  if fast is not None and fast.step is cell.step:
    if resets is None:
      return fast.run(params, xs_T, state0, active_T, unroll)
    if fast.takes_resets:
      return fast.run(params, xs_T, state0, active_T, unroll, resets=resets)
  return step_loop(cell.step, params, xs_T, state0, active_T, unroll, resets)


def step_loop(step, params, xs_T, state0, active_T, unroll: int, resets: Resets = None):
  """The definition: `step` once per time step, in a `jax.lax.scan`."""
  def body(state, inp):
    x_t, active, at = inp
    state = reset(resets, at, state)
    new_state, h = step(params, state, x_t)
    if active is None:
      return new_state, h
    return select(active, new_state, state), zero_inactive(active, h)

  if jax.default_backend() in RECOMPUTE_STEP_ON:
    body = jax.checkpoint(body)  # identical results; see RECOMPUTE_STEP_ON
  at_T = None if resets is None else resets.at_T
  return jax.lax.scan(body, state0, (mask_inputs(active_T, xs_T), active_T, at_T), unroll=unroll)
