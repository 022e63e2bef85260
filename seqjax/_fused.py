"""The time loop with a hand-written backward pass, for cells that declare their `LoopParts`.

Autodiff of `lax.scan` differentiates each step on its own, so its backward loop does, per step,
the product dpre·W_hᵀ (what flows to h_{t-1}) *and* the weight-gradient product h_{t-1}ᵀ·dpre,
accumulating dW_h one small [H, B] x [B, K] matmul at a time. Here the backward loop does only
the first; the weight gradients are taken after the loop from all steps at once,

  dW_h = Σ_t h_{t-1}ᵀ dpre_t = H_prevᵀ · dPre      ([H, T·B] x [T·B, K], one large matmul)

and, for wide inputs, dW_x, the biases and dxs the same way (narrow inputs recompute x·W_x per
step and accumulate their small gradients in the loop). The step's own derivative is jax.vjp of
`update`, or the cell's `UpdateBackward` where autodiff of it loses precision (the RWA). On CPU
at large batches (`backward_layout`: B >= 64 and a per-step [B, K] of 2^15 floats or more,
unless the host's allocator keeps freed memory) and past a memory cap (T·B·K > 2^27 floats) the
backward loop instead keeps only the state, recomputes h·W_h and accumulates the hidden-side
weight gradient in the loop: there the [T, B, K] buffers cost more page faults or memory than
the per-step product they save. Same
numbers as autodiff up to the order of float additions — tested against jax.grad of the
per-step loop in float64.
"""

import contextlib
import math

import jax
import jax.numpy as jnp

from seqjax._timeloop import mask_inputs, select, zero_inactive

# JAX's trace stack is private API, read only to name cells.autodiff_backward in forward mode's
# error. Without it (moved or renamed in some JAX version) seqjax runs the same and forward mode
# gives JAX's own error.
try:
  from jax._src import core as _jax_core
  from jax._src.interpreters import ad as _jax_ad
  _TRACE_STACK = (_jax_core.trace_ctx, _jax_ad.LinearizeTrace, _jax_ad.JVPTrace)
except (ImportError, AttributeError):
  _TRACE_STACK = None


# Input width up to which the backward pass recomputes the input projection per step rather
# than storing it (see make_fused_scan's store_input_projection).
NARROW_INPUT = 32


def under_forward_mode() -> bool:
  """Whether the code being traced now runs under forward-mode autodiff (`jax.jvp`, `jax.jacfwd`,
  `jax.linearize` in JAX's jvp + partial-eval mode) rather than reverse mode.

  The first autodiff trace up the current trace stack decides: a JVP trace there means forward
  mode; a linearize trace (`jax.grad`, `jax.vjp`) means reverse mode, also when a JVP trace sits
  further up (forward-over-reverse: Hessian-vector products, which the hand-written pass
  supports). JAX's trace stack is private API: if it changes shape, this answers False and JAX's
  own error ("can't apply forward-mode autodiff (jvp) to a custom_vjp function") remains.
  """
  if _TRACE_STACK is None:
    return False
  trace_ctx, linearize_trace, jvp_trace = _TRACE_STACK
  try:
    trace = trace_ctx.trace
    while trace is not None:
      if isinstance(trace, linearize_trace):
        return False
      if isinstance(trace, jvp_trace):
        # With direct linearize off, jax.grad itself runs a JVP trace: no telling them apart.
        return bool(jax.config.jax_use_direct_linearize)
      trace = getattr(trace, "parent_trace", None)
  except AttributeError:
    return False
  return False


def _rows(tree):
  """[T, *batch, K] leaves -> [T * prod(batch), K]."""
  return jax.tree.map(lambda a: a.reshape(-1, a.shape[-1]), tree)


# Backends on which `backward_layout` may keep the weight gradients in the backward loop; on the
# others (GPU, TPU) they are always taken after it. () forces "after" everywhere.
IN_LOOP_ON = ("cpu",)
# CPU with glibc's default allocator, which maps the after-the-loop layout's large buffers afresh
# at every call (page faults); measured on a quiet 2-core machine (BUILD_NOTES.md, "The backward
# layout, re-measured"):
# 80 shapes, 5 cells x B in {8, 32, 64, 128} x H in {32, 64, 128, 256}, T = 100, two runs.
# The in-loop layout won only where the per-step [B, K] buffers of the after-the-loop layout
# are large, B * K >= 2**15 floats (128 KiB) at B >= 64: after / in loop 1.01-1.41 there in
# one run, 0.89-1.31 in the other; mostly below 1 everywhere else (B = 8: 0.55-0.96 at
# H >= 64). Below B = 64 a wide K does not tip it (lstm B=32 H=256, B*K = 2**15: 0.85, 0.76).
# With the freed memory kept (`freed_memory_kept`) after the loop wins at every grid point.
IN_LOOP_FROM_BATCH, IN_LOOP_FROM_BUFFER = 64, 2 ** 15
# A memory cap, a policy and not a measured speed rule: past T·B·K = 2^27 floats (512 MiB a
# buffer in float32) the per-step buffers (h·W_h and dpre; x·W_x and its gradient for wide
# inputs) cost more memory than the speed they buy is worth (the lstm's train step at B=100
# H=250 T=10000: XLA's temporaries 12.0 GB after the loop, 4.0 GB in it), so the loop keeps the
# weight gradients (1.01-1.58x the time on the grid, below the cap; not timed past it). Per
# layer, and over the batch dims `scan` sees (a vmapped group's runs multiply it). CPU only:
# the GPU path stays as measured on GPUs, where the in-loop layout was never timed.
AFTER_MAX_BUFFER = 2 ** 27
LAYOUTS = ("after", "in_loop")
# What `forced_layout` and `freed_memory_kept` set, read when a step is traced.
_state = {"forced": None, "memory_kept": False}


@contextlib.contextmanager
def _setting(name, value):
  saved, _state[name] = _state[name], value
  try:
    yield
  finally:
    _state[name] = saved


def forced_layout(layout: str):
  """Inside, every hand-written backward pass traced takes `layout` ("after" or "in_loop")
  whatever `backward_layout`'s rule says (benchmarks of both, tests of both). jit traces at a
  function's first call: make that call inside."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
  return _setting("forced", layout)


def freed_memory_kept():
  """Inside, `backward_layout` knows what it cannot see: that the host's allocator keeps the
  memory a step frees (glibc told so by mallopt or by MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=... MALLOC_ARENA_MAX=1; the launcher's --malloc=keep). Then the
  after-the-loop layout's buffers fault no new pages at each call, and the rule takes it at
  every batch up to the memory cap (AFTER_MAX_BUFFER). jit traces at a function's first call:
  make that call inside."""
  return _setting("memory_kept", True)


def forced() -> str | None:
  """The layout `forced_layout` imposes now, or None (the rule decides)."""
  return _state["forced"]


def memory_kept() -> bool:
  """Whether the rule runs inside `freed_memory_kept` now."""
  return _state["memory_kept"]


def backward_layout(backend: str, batch: int, width: int, length: int, in_loop_on=None) -> str:
  """The backward loop's layout for a cell whose h·W_h is `width` (K) wide per sequence
  (lstm 4H, gru 3H, rwa 2H, rnn H), run over `batch` sequences (the product of the batch dims)
  for `length` (T) steps on `backend` ("cpu", "gpu", "tpu"):

  "after": keep h·W_h per step and take the hidden-side weight gradient after the loop, one
    [H, T·B] x [T·B, K] product; "in_loop": keep only the state, recompute h·W_h and accumulate
    h_{t-1}ᵀ·dpre_t in the loop (as autodiff does) — no [T, B, K] buffers written and read.
  On the backends of `in_loop_on` (default `IN_LOOP_ON`, read now): in the loop past the memory
  cap (`over_memory_cap`; then no wide input's x·W_x is kept either), and at large batches
  (B >= IN_LOOP_FROM_BATCH and B·K >= IN_LOOP_FROM_BUFFER) unless inside `freed_memory_kept`;
  after it everywhere else.
  Inside `forced_layout`, its layout.
  """
  if forced() is not None:
    return forced()
  if backend not in (IN_LOOP_ON if in_loop_on is None else in_loop_on):
    return "after"
  large_batch = batch >= IN_LOOP_FROM_BATCH and batch * width >= IN_LOOP_FROM_BUFFER
  if over_memory_cap(batch, width, length) or large_batch and not memory_kept():
    return "in_loop"
  return "after"


def over_memory_cap(batch: int, width: int, length: int) -> bool:
  """Whether a [T, B, K] buffer would pass AFTER_MAX_BUFFER floats."""
  return length * batch * width > AFTER_MAX_BUFFER


def projection_width(parts, params, h) -> int:
  """K: the summed last dims of project_h(params, h), from shapes alone."""
  out = jax.eval_shape(parts.project_h, params, h)
  return sum(leaf.shape[-1] for leaf in jax.tree.leaves(out))


def fused_run(parts):
  """The `FastLoop.run` of a cell declared by its `LoopParts`."""
  def run(params, xs_T, state0, active_T, unroll, resets=None):
    batch, length = math.prod(xs_T.shape[1:-1]), xs_T.shape[0]
    width = projection_width(parts, params, state0.h)
    layout = backward_layout(jax.default_backend(), batch, width, length)
    # in the loop past the memory cap no [T, B, K] buffer is kept, the input side's included
    store_px = xs_T.shape[-1] > NARROW_INPUT and not (
        layout == "in_loop" and over_memory_cap(batch, width, length))
    scan_fn = make_fused_scan(parts, unroll, store_input_projection=store_px,
                              weights_in_loop=layout == "in_loop")
    at_T, reset_state = (None, None) if resets is None else resets
    return scan_fn(params, xs_T, state0, active_T, at_T, reset_state)
  return run


def make_fused_scan(parts, unroll: int, store_input_projection: bool,
                    weights_in_loop: bool = False):
  """Returns scan_fn(params, xs_T, state0, active_T, at_T, reset_state) -> (final_state, hs_T).

  xs_T: [T, *batch, F] (time-major); active_T: None or bool [T, *batch] (False = padding: the
  state is carried unchanged, the output is 0, the input reaches nothing); at_T: None or bool
  [T, *batch], the steps before which the state is reset_state (False at padded steps).
  store_input_projection: keep px for the backward pass and take the input-side gradients after
  the loop too (wide inputs), or recompute px and accumulate them in the loop (narrow inputs,
  where a [T, B, K] buffer costs more memory traffic than the small products it saves).
  weights_in_loop: keep only the state per step, recompute ph = h·W_h in the backward loop and
    accumulate the hidden-side weight gradient h_{t-1}ᵀ·dpre_t there (as autodiff does); or keep
    ph and take that gradient after the loop from all steps at once (two [T, B, K] buffers, ph
    and dpre, written and read: `backward_layout`'s "after").
  """
  project_x, project_h, update, takes_params, backward = parts
  update_p = update if takes_params else (lambda params, state, px, ph: update(state, px, ph))
  leave = (lambda state, d: d) if backward is None else backward.leave

  def step(params, state, x_t, active):
    px, ph = project_x(params, x_t), project_h(params, state.h)
    new_state, h = update_p(params, state, px, ph)
    if active is not None:
      new_state, h = select(active, new_state, state), zero_inactive(active, h)
    return new_state, h, px, ph

  def forward(params, xs_T, state0, active_T, at_T, reset_state, keep):
    def body(state, inp):
      x_t, active, at = inp
      if at is not None:
        state = select(at, reset_state, state)
      new_state, h, px, ph = step(params, state, x_t, active)
      return new_state, (h, keep(state, px, ph))
    return jax.lax.scan(body, state0, (mask_inputs(active_T, xs_T), active_T, at_T),
                        unroll=unroll)

  @jax.custom_vjp
  def scan_fn(params, xs_T, state0, active_T, at_T, reset_state):
    final, (hs_T, _) = forward(params, xs_T, state0, active_T, at_T, reset_state,
                               lambda *_: ())
    return final, hs_T

  def fwd(params, xs_T, state0, active_T, at_T, reset_state):
    def keep(state, px, ph):
      return (state, None if weights_in_loop else ph,
              *((px,) if store_input_projection else ()))
    final, (hs_T, residuals) = forward(params, xs_T, state0, active_T, at_T, reset_state, keep)
    return (final, hs_T), (params, xs_T, active_T, at_T, residuals, state0, final, reset_state)

  def bwd(saved, cotangents):
    params, xs_T, active_T, at_T, residuals, state0, final, reset_state = saved
    d_final, dhs_T = cotangents
    xs_in = mask_inputs(active_T, xs_T)
    if backward is not None:
      d_final = backward.enter(final, d_final)

    def body(carry, inp):
      d_state, d_params_acc, d_reset_acc = carry
      (state, ph, *px), x_t, dh, active, at = inp
      px = px[0] if px else project_x(params, x_t)
      ph = project_h(params, state.h) if ph is None else ph
      if active is not None:
        dh = zero_inactive(active, dh)
      if backward is not None:
        d_prev, dpx, dph = backward.step(state, px, ph, d_state, dh)
      elif takes_params:
        # a padded step's update reaches nothing, so its params get no gradient from it
        d_out = d_state if active is None else zero_inactive(active, d_state)
        d_params_u, d_prev, dpx, dph = jax.vjp(update, params, state, px, ph)[1]((d_out, dh))
        d_params_acc = jax.tree.map(jnp.add, d_params_acc, d_params_u)
      else:
        d_prev, dpx, dph = jax.vjp(update, state, px, ph)[1]((d_state, dh))
      if active is not None:
        dpx, dph = zero_inactive(active, (dpx, dph))
      if weights_in_loop:
        _, hp_vjp = jax.vjp(project_h, params, state.h)
        d_params_h, dh_prev = hp_vjp(dph)
        d_params_acc = jax.tree.map(jnp.add, d_params_acc, d_params_h)
      else:
        _, h_vjp = jax.vjp(lambda h: project_h(params, h), state.h)
        dh_prev = h_vjp(dph)[0]
      d_prev = d_prev._replace(h=d_prev.h + dh_prev)
      if active is not None:
        d_prev = select(active, d_prev, d_state)
      if at is not None:
        # a reset step's state came from reset_state, not from the step before
        d_reset_acc = jax.tree.map(jnp.add, d_reset_acc, zero_inactive(at, leave(state, d_prev)))
        d_prev = zero_inactive(~at, d_prev)
      dph = () if weights_in_loop else dph
      if store_input_projection:
        return (d_prev, d_params_acc, d_reset_acc), (dpx, dph)
      _, x_vjp = jax.vjp(project_x, params, x_t)
      d_params_x, dx = x_vjp(dpx)
      return (d_prev, jax.tree.map(jnp.add, d_params_acc, d_params_x), d_reset_acc), (dx, dph)

    zeros = jax.tree.map(jnp.zeros_like, params)
    reset_zeros = None if at_T is None else jax.tree.map(jnp.zeros_like, reset_state)
    (d_state0, d_params, d_reset), (d_in_T, dphs_T) = jax.lax.scan(
        body, (d_final, zeros, reset_zeros), (residuals, xs_in, dhs_T, active_T, at_T),
        reverse=True, unroll=unroll)
    # All steps as one [T*B, .] matrix: XLA's CPU dot is ~2x faster on that than on [T, B, .]
    # contracted over two axes.
    if not weights_in_loop:
      _, hp_vjp = jax.vjp(lambda p: project_h(p, _rows(residuals[0].h)), params)
      d_params = jax.tree.map(jnp.add, d_params, hp_vjp(_rows(dphs_T))[0])
    if store_input_projection:
      _, x_vjp = jax.vjp(project_x, params, _rows(xs_in))
      d_params_x, d_xs = x_vjp(_rows(d_in_T))
      d_params = jax.tree.map(jnp.add, d_params, d_params_x)
      d_xs = d_xs.reshape(xs_T.shape)
    else:
      d_xs = d_in_T
    if active_T is not None:  # the gradient of the input masking
      d_xs = zero_inactive(active_T, d_xs)
    return d_params, d_xs, leave(state0, d_state0), None, None, d_reset

  scan_fn.defvjp(fwd, bwd)
  return scan_fn
