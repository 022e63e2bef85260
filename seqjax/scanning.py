"""Running a cell over time: `final_state, hs = seqjax.scan(cell, params, xs, ...)`."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _fused, _timeloop
from seqjax.cells.base import Cell, hand_written_backward, positive_int

# Measured best `unroll` per backend (BUILD_NOTES.md, performance): H100, LSTM B=100 T=1000
# H=256 train step 33 ms at 1, 19 at 4, 17 at 8, 18 at 16; on the 2-core CPU > 1 never helped.
UNROLL_BY_BACKEND = {"gpu": 8}


def default_unroll() -> int:
  return UNROLL_BY_BACKEND.get(jax.default_backend(), 1)


def scan(cell: Cell, params, xs, *, lengths=None, initial_state=None, unroll: int = None,
         remat: bool = False, reverse: bool = False, resets=None):
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
    reverse: run each sequence backwards, from its last valid step (lengths[b] - 1) down to
      step 0 (flax `nn.RNN(reverse=True, keep_order=True)`): outputs stay at their time
      positions (padding 0), the final state is the state after step 0.
    resets: optional bool [*batch, T]: where resets[b, t] is True, the state before step t is
      the initial state again (episode boundaries); `reverse` reads it at the same positions
      (the state coming from step t + 1 is replaced).

  Returns:
    (final_state, hs) with hs: [*batch, T, H].

  The result is that of calling `cell.step` once per time step. The cell's `fast_loop`, when it
  belongs to that very step, computes the same faster: the built-in rnn/lstm/gru/rwa (and cells
  built with `cells.fused_step`) run a loop with a hand-written backward pass (a
  `jax.custom_vjp`): reverse mode, vmap and forward-over-reverse (Hessian-vector products) work;
  forward mode (`jax.jvp`, `jax.jacfwd`) raises a TypeError naming `cells.autodiff_backward(cell)`,
  which computes the same values with JAX's own rules (a function jitted and traced before
  `jax.jvp` reaches it gives JAX's own "can't apply forward-mode autodiff (jvp) to a custom_vjp
  function" instead). The min cells run in parallel over time. A cell whose `step` was replaced
  or wrapped (`cell._replace(step=...)`) runs that step, with JAX's rules.
  """
  if not isinstance(cell, Cell):
    raise TypeError(f"scan needs a seqjax Cell, got {type(cell).__name__}")
  xs = jnp.asarray(xs)
  if xs.ndim < 2:
    raise ValueError(f"xs must be [B, T, F] or [T, F]; got shape {xs.shape}")
  if hand_written_backward(cell) and _fused.under_forward_mode():
    raise TypeError(
        f"seqjax.scan: cell {cell.name!r} has a hand-written backward pass, which forward mode "
        "(jax.jvp, jax.jacfwd) cannot run through (reverse mode, vmap and Hessian-vector "
        "products can); scan cells.autodiff_backward(cell) instead: the same values, "
        "differentiated by JAX's own rules")
  unroll = positive_int("unroll", default_unroll() if unroll is None else unroll)
  batch_shape, T = xs.shape[:-2], xs.shape[-2]
  if initial_state is None:
    initial_state = cell.initial_state(params, batch_shape)
  if lengths is not None:
    lengths = _check_lengths(lengths, batch_shape, T)
  if resets is not None:
    resets = _check_resets(resets, batch_shape, T)
  if reverse:
    xs, resets = _reverse_valid(xs, lengths), _reverse_valid(resets, lengths, time_axis=-1)
  final_state, hs = _forward(cell, params, xs, lengths, initial_state, unroll, remat, resets)
  return final_state, _reverse_valid(hs, lengths) if reverse else hs


def _forward(cell, params, xs, lengths, initial_state, unroll, remat, resets):
  """scan's forward direction, its arguments checked."""
  batch_shape, T = xs.shape[:-2], xs.shape[-2]
  xs_T = jnp.moveaxis(xs, -2, 0)  # time-major for the loop: [T, *batch, F]
  chunk = math.isqrt(T - 1) + 1 if remat and T > 1 else T  # ceil(sqrt(T))
  num_chunks = -(-T // chunk) if T else 0
  padded_T = num_chunks * chunk
  if padded_T != T:
    # Chunked remat needs whole chunks: the extra steps are masked out like padding.
    xs_T = jnp.concatenate([xs_T, jnp.zeros((padded_T - T, *xs_T.shape[1:]), xs_T.dtype)])
    if lengths is None:
      lengths = jnp.full(batch_shape, T, jnp.int32)
  active_T = None if lengths is None else _expand_time(jnp.arange(padded_T, dtype=jnp.int32),
                                                       lengths)
  resets_T = None
  if resets is not None:
    # time-major, padded steps never reset (they carry the state unchanged)
    resets_T = jnp.moveaxis(resets, -1, 0)
    resets_T = jnp.concatenate([resets_T, jnp.zeros((padded_T - T, *batch_shape), bool)])
    resets_T = resets_T if active_T is None else resets_T & active_T

  def run(state, inputs):
    xs_T, active_T, resets_T = inputs
    # the state resets go back to is the scan's initial state, also in a later remat chunk
    reset = None if resets_T is None else _timeloop.Resets(resets_T, initial_state)
    return _timeloop.run(cell, params, xs_T, state, active_T, unroll, reset)

  if remat and T > 1:
    split = lambda a: a.reshape(num_chunks, chunk, *a.shape[1:])
    final_state, hs_T = jax.lax.scan(jax.checkpoint(run), initial_state,
                                     jax.tree.map(split, (xs_T, active_T, resets_T)))
    hs_T = hs_T.reshape(padded_T, *hs_T.shape[2:])[:T]
  else:
    final_state, hs_T = run(initial_state, (xs_T, active_T, resets_T))
  return final_state, jnp.moveaxis(hs_T, 0, -2)


def _reverse_valid(a, lengths, time_axis=-2):
  """a [*batch, T, ...] with each sequence's first lengths[b] steps in reverse order (padding
  left where it is); the whole time axis reversed without lengths. Its own inverse."""
  if a is None:
    return None
  if lengths is None:
    return jnp.flip(a, time_axis)
  time_axis %= a.ndim
  T = a.shape[time_axis]
  ts = jnp.arange(T, dtype=lengths.dtype).reshape((1,) * lengths.ndim + (T,))
  L = lengths[..., None]
  index = jnp.where(ts < L, L - 1 - ts, ts)  # [*batch, T]
  index = index.reshape(index.shape + (1,) * (a.ndim - time_axis - 1))
  return jnp.take_along_axis(a, index, axis=time_axis, mode="clip")


def _check_resets(resets, batch_shape, T):
  resets = jnp.asarray(resets)
  if resets.shape != (*batch_shape, T):
    raise ValueError(f"resets must have the shape [*batch, T] = {(*batch_shape, T)} of xs; "
                     f"got shape {resets.shape}")
  if resets.dtype != jnp.bool_:
    raise ValueError(f"resets must be booleans; got dtype {resets.dtype}")
  return resets


def _expand_time(ts, lengths):
  """active[t, *batch] = t < lengths[*batch]."""
  return ts.reshape(ts.shape + (1,) * lengths.ndim) < lengths[None]


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
