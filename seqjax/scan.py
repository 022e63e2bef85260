"""Running a cell over time: `final_state, hs = seqjax.scan(cell, params, xs, ...)`."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _fused
from seqjax.cells.base import Cell

# Backends on which, for cells without `parts`, the backward pass recomputes each step's
# internals from the carry instead of storing them. CPU, measured: 3x less memory than storing
# them, speed neutral on a quiet machine (+-4%) (BUILD_NOTES.md). The built-in cells' hand-
# written pass keeps state and h·W_h per step instead: ~10% faster, ~2.6x the memory.
RECOMPUTE_STEP_ON = ("cpu",)


# Measured best `unroll` per backend (BUILD_NOTES.md, performance): H100, LSTM B=100 T=1000
# H=256 train step 33 ms at 1, 19 at 4, 17 at 8, 18 at 16; on the 2-core CPU > 1 never helped.
UNROLL_BY_BACKEND = {"gpu": 8}


def default_unroll() -> int:
  return UNROLL_BY_BACKEND.get(jax.default_backend(), 1)


# Input width up to which the hand-written backward pass recomputes the input projection per
# step rather than storing it (seqjax._fused).
NARROW_INPUT = 32


def scan(cell: Cell, params, xs, lengths=None, initial_state=None, unroll: int = None,
         remat: bool = False):
  """Runs `cell.step` over the time axis of `xs`.

  Args:
    cell: a `seqjax.cells.Cell` (a stack included).
    params: the cell's params.
    xs: [*batch, T, F], batch-major: [B, T, F], or [T, F] for one sequence.
    lengths: optional ints of shape `batch` (0 <= length <= T). Sequence b then runs only
      lengths[b] steps: its final state is the state after exactly that many steps, its outputs
      past that are 0, and whatever the padding holds reaches neither an output nor a gradient.
    initial_state: the state before step 1; default `cell.initial_state(params, batch)`.
    unroll: steps per loop iteration (`jax.lax.scan`'s unroll); never changes results.
      Default: the measured best for the backend, `default_unroll()` (1 on CPU, 8 on GPU).
    remat: checkpoint the loop in chunks of ~sqrt(T) steps, so the backward pass keeps
      O(sqrt(T)) states instead of O(T), for about one extra forward pass of compute.

  Returns:
    (final_state, hs) with hs: [*batch, T, H].

  Cells with `parts` (the built-in ones) are differentiated by a hand-written backward pass
  (`seqjax._fused`, a `jax.custom_vjp`): reverse mode, vmap and forward-over-reverse (Hessian-
  vector products) work; plain forward mode (`jax.jvp`, `jax.jacfwd` of scan itself) does not —
  scan `cells.autodiff_backward(cell)` for that: the same values, JAX's own rules. A cell whose
  `step` was replaced (`cell._replace(step=...)`) runs that step, with JAX's rules.
  """
  if not isinstance(cell, Cell):
    raise TypeError(f"scan needs a seqjax Cell, got {type(cell).__name__}")
  xs = jnp.asarray(xs)
  if xs.ndim < 2:
    raise ValueError(f"xs must be [B, T, F] or [T, F]; got shape {xs.shape}")
  if unroll is None:
    unroll = default_unroll()
  if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
    raise ValueError(f"unroll must be an int >= 1, got {unroll!r}")
  batch_shape, T = xs.shape[:-2], xs.shape[-2]
  if initial_state is None:
    initial_state = cell.initial_state(params, batch_shape)
  if lengths is not None:
    lengths = _check_lengths(lengths, batch_shape, T)

  if cell.layers and getattr(cell.step, "layers", None) is cell.layers:
    # A stack, layer by layer: each layer's output sequence is the next one's input, which
    # equals stepping the whole stack per time step and lets every layer take its own fast path.
    final_states, hs = [], xs
    for layer, p, s in zip(cell.layers, params, initial_state):
      s, hs = scan(layer, p, hs, lengths, s, unroll, remat)
      final_states.append(s)
    return tuple(final_states), hs

  xs_T = jnp.moveaxis(xs, -2, 0)  # time-major for the loop: [T, *batch, F]
  chunk = math.isqrt(T - 1) + 1 if remat and T > 1 else T  # ceil(sqrt(T))
  num_chunks = -(-T // chunk) if T else 0
  padded_T = num_chunks * chunk
  if padded_T != T:
    # Chunked remat needs whole chunks: the extra steps are masked out like padding.
    xs_T = jnp.concatenate([xs_T, jnp.zeros((padded_T - T, *xs_T.shape[1:]), xs_T.dtype)])
    if lengths is None:
      lengths = jnp.asarray(T, jnp.int32)

  def step(state, x_t):
    return cell.step(params, state, x_t)

  def masked_step(state, t_and_x):
    t, x_t = t_and_x
    active = t < lengths  # [*batch]
    # Zeroing padded inputs keeps garbage (NaN, inf) out of the step, so the discarded branch
    # of the `where`s below cannot put NaN into the gradient.
    x_t = jnp.where(_expand(active, x_t), x_t, jnp.zeros((), x_t.dtype))
    new_state, h = cell.step(params, state, x_t)
    new_state = jax.tree.map(lambda new, old: jnp.where(_expand(active, new), new, old),
                             new_state, state)
    return new_state, jnp.where(_expand(active, h), h, jnp.zeros((), h.dtype))

  if cell.parts is not None and getattr(cell.step, "parts", None) is cell.parts:
    fused = _fused.make_fused_scan(cell.parts, unroll,
                                   store_input_projection=xs.shape[-1] > NARROW_INPUT)
    if lengths is None:
      run, inputs = (lambda state, xs: fused(params, xs, state, None)), xs_T
    else:
      active_T = _expand_time(jnp.arange(padded_T, dtype=jnp.int32), lengths)
      run, inputs = (lambda state, inp: fused(params, inp[1], state, inp[0])), (active_T, xs_T)
  else:
    if lengths is None:
      body, inputs = step, xs_T
    else:
      body, inputs = masked_step, (jnp.arange(padded_T, dtype=jnp.int32), xs_T)
    if jax.default_backend() in RECOMPUTE_STEP_ON:
      # identical results; see RECOMPUTE_STEP_ON
      body = jax.checkpoint(body)
    run = lambda state, inp: jax.lax.scan(body, state, inp, unroll=unroll)

  if remat and T > 1:
    split = lambda a: a.reshape(num_chunks, chunk, *a.shape[1:])
    run_chunk = jax.checkpoint(run)
    final_state, hs_T = jax.lax.scan(run_chunk, initial_state, jax.tree.map(split, inputs))
    hs_T = hs_T.reshape(padded_T, *hs_T.shape[2:])[:T]
  else:
    final_state, hs_T = run(initial_state, inputs)
  return final_state, jnp.moveaxis(hs_T, 0, -2)


def _expand_time(ts, lengths):
  """active[t, *batch] = t < lengths[*batch]."""
  return ts.reshape(ts.shape + (1,) * lengths.ndim) < lengths[None]


def _expand(active, like):
  """Reshapes the per-sequence mask [*batch] so it broadcasts against a [*batch, ...] leaf."""
  return active.reshape(active.shape + (1,) * (like.ndim - active.ndim))


def _check_lengths(lengths, batch_shape, T):
  lengths = jnp.asarray(lengths)
  if lengths.shape != tuple(batch_shape):
    raise ValueError(f"lengths must have the batch shape {tuple(batch_shape)} of xs; "
                     f"got shape {lengths.shape}")
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"lengths must be integers; got dtype {lengths.dtype}")
  try:
    values = np.asarray(lengths)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return lengths  # traced: unknowable here; out-of-range lengths act as clipped to [0, T]
  if values.size:
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > T:
      raise ValueError(f"lengths must lie in [0, T={T}]; got values in [{lo}, {hi}]")
  return lengths
