"""What the min cells share: their gates read x_t only, so every matmul leaves the time loop,
and h_t is an associative running combination of per-step terms.

Over a whole sequence they run either as `jax.lax.associative_scan` over time (O(log T) depth:
no sequential loop on an accelerator) or as a `jax.lax.scan` loop: over their elementwise part
alone with the inputs projected for all steps by one matmul before it (wide inputs), or over
`step` itself (narrow inputs). Same numbers up to the order of float operations; which is
faster depends on the backend (ASSOCIATIVE_ON).
"""

import math

import jax
import jax.numpy as jnp

from seqjax._fused import NARROW_INPUT
from seqjax._timeloop import expand, mask_inputs, reset, select, step_loop, zero_inactive
from seqjax.cells.base import FastLoop, bias, glorot, matmul, positive_int, state_dtype

# Backends on which the min cells run `jax.lax.associative_scan` over time. CPU, measured
# (2 cores, B=100, T=1000, F=2, H=250, train step fwd+bwd): the associative scan's log-depth
# passes cost 2-3x a loop there. Accelerators: the associative scan (not measured yet).
ASSOCIATIVE_ON = ("gpu", "tpu")


def init_params(key, input_size, hidden_size, weights, biases):
  """{w: Glorot-uniform [F, H] for w in weights} | {b: zeros [H] for b in biases}."""
  F = positive_int("input_size", input_size)
  keys = jax.random.split(key, len(weights))
  params = {w: glorot(k, (F, hidden_size), jnp.float32) for w, k in zip(weights, keys)}
  return params | {b: jnp.zeros((hidden_size,), jnp.float32) for b in biases}


def affine(params, x, gate, dtype):
  """x W_<gate> + b_<gate>, in the state's precision (at least float32)."""
  p = matmul(x, params["W_" + gate], dtype)
  return (p + bias(params["b_" + gate], p)).astype(state_dtype(params["W_" + gate].dtype))


def check_parallel(parallel):
  if parallel is not None and not isinstance(parallel, bool):
    raise ValueError(f"parallel must be None, True or False, got {parallel!r}")
  return parallel


def associative_now(parallel) -> bool:
  return jax.default_backend() in ASSOCIATIVE_ON if parallel is None else parallel


def min_cell_loop(project, update, associative, parallel):
  """(step, FastLoop) of a min cell.

  project(params, x [..., F]) -> terms: a tuple of [..., H] arrays (all the matmuls);
  update(state, terms_t) -> (state, h): one step from its terms (step = update ∘ project);
  associative(terms_T, state0, active_T, resets) -> (final_state, hs_T): all steps at once
    (resets: None or `seqjax._timeloop.Resets`).
  parallel: True (associative), False (loop) or None (the backend's choice, ASSOCIATIVE_ON).
  """
  def step(params, state, x_t):
    return update(state, project(params, x_t))

  def run(params, xs_T, state0, active_T, unroll, resets=None):
    T, batch_shape, F = xs_T.shape[0], xs_T.shape[1:-1], xs_T.shape[-1]
    if not associative_now(parallel) and F <= NARROW_INPUT:
      # CPU, measured (B=100, T=1000, F=2, H=128): projecting per step inside the loop is 2x
      # faster than reading [T, B, H] buffers of all steps' projections (train and inference).
      return step_loop(step, params, xs_T, state0, active_T, unroll, resets)
    xs = mask_inputs(active_T, xs_T).reshape(T * math.prod(batch_shape), F)
    terms = tuple(v.reshape(T, *batch_shape, v.shape[-1]) for v in project(params, xs))
    if T == 0:
      return state0, terms[0]
    if associative_now(parallel):
      return associative(terms, state0, active_T, resets)

    def body(state, inp):
      terms_t, active, at = inp
      state = reset(resets, at, state)
      new_state, h = update(state, terms_t)
      if active is None:
        return new_state, h
      return select(active, new_state, state), zero_inactive(active, h)

    at_T = None if resets is None else resets.at_T
    return jax.lax.scan(body, state0, (terms, active_T, at_T), unroll=unroll)

  return step, FastLoop(step, run, takes_resets=True)


def linear_loop(state_type, project, parallel):
  """(step, FastLoop) of a cell whose h_t = a_t·h_{t−1} + b_t with (a_t, b_t) = project(params,
  x_t) and state `state_type(h)` (min_gru, min_lstm)."""
  def update(state, terms):
    a, b = terms
    h = a * state.h + b
    return state_type(h), h

  def associative(terms, state0, active_T, resets):
    h, hs_T = linear_recurrence(*terms, state0.h, active_T,
                                None if resets is None else resets._replace(state=resets.state.h))
    return state_type(h), hs_T

  return min_cell_loop(project, update, associative, parallel)


def identity_where_padded(active_T, elements, identity):
  """Padded steps' elements replaced by the combine's identity (so they change no prefix)."""
  if active_T is None:
    return elements
  return tuple(jnp.where(expand(active_T, e), e, jnp.asarray(i, e.dtype))
               for e, i in zip(elements, identity))


def weighted_mean_outputs(state_type, m, n, d, state0, active_T):
  """(final_state, hs_T) of a cell whose h = tanh(n / d), from the running sums m, n, d
  [T, *batch, H] of all steps (min_rwa, min_rda): padded steps' outputs 0, length 0 state0."""
  # d = 0 only where no step has been seen yet (then n = 0 too, and h is the initial 0)
  hs_T = jnp.tanh(n / jnp.where(d > 0, d, 1))
  final = state_type(h=hs_T[-1], n=n[-1], d=d[-1], m=m[-1])
  if active_T is None:
    return final, hs_T
  final = select(active_T.any(axis=0), final, state0)  # length 0: state0 exactly
  return final, zero_inactive(active_T, hs_T)


def linear_recurrence(a_T, b_T, h0, active_T, resets=None):
  """h_t = a_t h_{t-1} + b_t for every t at once; a_T, b_T: [T, *batch, H], h0: [*batch, H];
  resets: None or `Resets` whose state is an h [*batch, H].
  Returns (h_T, hs_T), padded steps left out (identity a = 1, b = 0; their outputs 0)."""
  a_T, b_T = identity_where_padded(active_T, (a_T, b_T), (1, 0))

  def combine(first, then):  # apply `first`, then `then`
    (a1, b1), (a2, b2) = first, then
    return a1 * a2, a2 * b1 + b2

  # a start state h is the constant map (a, b) = (0, h)
  _, hs_T = prefix_combine(combine, (a_T, b_T), lambda h: (jnp.zeros_like(h), h), h0, resets)
  return hs_T[-1], hs_T if active_T is None else zero_inactive(active_T, hs_T)


def prefix_combine(combine, elements, start_of, state0, resets=None):
  """start ∘ e_1 ∘ … ∘ e_t for every t at once (`jax.lax.associative_scan`), start =
  start_of(state0); elements: a tuple of [T, *batch, H] arrays; start_of(state) -> the element
  that stands for a state. resets (None or `Resets`): where resets.at_T[t], everything before
  step t is dropped and start_of(resets.state) stands in its place — a segmented scan, each
  element flagged by whether a reset lies at or after its stretch's start."""
  start = tuple(v[None] for v in start_of(state0))
  if resets is None:
    return combine(start, jax.lax.associative_scan(combine, elements))
  at = expand(resets.at_T, elements[0])  # [T, *batch, 1]
  restarted = combine(tuple(v[None] for v in start_of(resets.state)), elements)
  elements = tuple(jnp.where(at, r, e) for r, e in zip(restarted, elements))

  def segmented(first, then):
    (f1, v1), (f2, v2) = first, then
    joined = combine(v1, v2)
    return f1 | f2, tuple(jnp.where(f2, v, j) for v, j in zip(v2, joined))

  flags, values = jax.lax.associative_scan(segmented, (at, elements))
  from_start = combine(start, values)
  return tuple(jnp.where(flags, v, s) for v, s in zip(values, from_start))
