"""`seqjax.scan(..., reverse=True)` and `resets=` against literal per-sequence Python loops:
values and gradients (params, inputs, initial state) in float64, lengths 0 and T included."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import _fused, cells
from helpers import assert_trees_close, random_params

B, T, F, H = 4, 7, 3, 4
LENGTHS = [T, 0, 4, 1]
CELLS = {
    "lstm": lambda: cells.lstm(H),
    "rwa": lambda: cells.rwa(H),
    "lstm+rwa": lambda: cells.stack([cells.lstm(5), cells.rwa(H)]),
    "rwa, step loop": lambda: cells.rwa(H)._replace(fast_loop=None),
    "min_rwa, parallel": lambda: cells.min_rwa(H, parallel=True),
    "min_gru, parallel": lambda: cells.min_gru(H, parallel=True),
}


def _literal(cell, params, xs, state0, lengths, resets, reverse):
  """Per sequence b: `cell.step` in a Python loop over its lengths[b] steps (from step
  lengths[b] - 1 down to 0 when reverse), the state replaced by state0[b] before step t
  where resets[b, t]; outputs at their time positions, zero elsewhere."""
  finals, hss = [], []
  for b, L in enumerate(lengths):
    start = jax.tree.map(lambda v: v[b], state0)
    state, hs = start, [jnp.zeros((cell.hidden_size,), xs.dtype)] * xs.shape[1]
    for t in (reversed(range(L)) if reverse else range(L)):
      if resets is not None and resets[b][t]:
        state = start
      state, hs[t] = cell.step(params, state, xs[b, t])
    finals.append(state)
    hss.append(jnp.stack(hs))
  return jax.tree.map(lambda *v: jnp.stack(v), *finals), jnp.stack(hss)


def _value_and_grads(run, params, xs, state0, w):
  def loss(params, xs, state0):
    state, hs = run(params, xs, state0)
    return jnp.sum(hs * w) + sum(jnp.sum(jnp.tanh(v)) for v in jax.tree.leaves(state)), hs
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state0)


# cells whose hand-written backward is checked under both layouts (`_fused.backward_layout`:
# weight gradients after the loop at this tiny batch; in the loop forced)
BOTH_LAYOUTS = ("lstm", "lstm+rwa")


@pytest.mark.parametrize("name", CELLS)
def test_reverse_and_resets_equal_the_literal_loops(name):
  with jax.enable_x64(True):
    cell = CELLS[name]()
    kp, kr, kx, ks, kw, kz = jax.random.split(jax.random.key(1), 6)
    params = random_params(jax.tree.map(lambda v: v.astype(jnp.float64), cell.init(kp, F)), kr)
    xs = jax.random.normal(kx, (B, T, F), jnp.float64)
    # a reachable, non-trivial initial state: the state after a random prefix
    state0, _ = seqjax.scan(cell, params, jax.random.normal(ks, (B, 3, F), jnp.float64))
    w = jax.random.normal(kw, (B, T, cell.hidden_size), jnp.float64)
    resets = np.array(jax.random.bernoulli(kz, 0.3, (B, T)))
    resets[:, 0] = [True, False, True, False]
    resets[0, -1] = True
    lengths = jnp.array(LENGTHS)
    # remat and unroll for two cells only: the same reversal and resets code runs for all
    slow = [dict(remat=True, unroll=2)] if name in ("lstm", "min_rwa, parallel") else []
    layouts = (None, "in_loop") if name in BOTH_LAYOUTS else (None,)
    for reverse, speeds in [(False, [{}]), (True, [{}, *slow])]:
      ref = _value_and_grads(lambda p, x, s: _literal(cell, p, x, s, LENGTHS, resets, reverse),
                             params, xs, state0, w)
      for speed in speeds:
        for layout in layouts:
          with _fused.forced_layout(layout) if layout else contextlib.nullcontext():
            got = _value_and_grads(lambda p, x, s: seqjax.scan(
                cell, p, x, initial_state=s, lengths=lengths, resets=resets, reverse=reverse,
                **speed), params, xs, state0, w)
          assert_trees_close(got, ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("name", ["lstm"])
def test_reverse_alone_without_lengths(name):
  """Every sequence reversed whole (no lengths, no resets), gradients included (float64)."""
  with jax.enable_x64(True):
    cell = CELLS[name]()
    params = random_params(jax.tree.map(lambda v: v.astype(jnp.float64),
                                        cell.init(jax.random.key(0), F)), jax.random.key(1))
    xs = jax.random.normal(jax.random.key(2), (B, T, F), jnp.float64)
    state0 = cell.initial_state(params, (B,))
    w = jax.random.normal(jax.random.key(3), (B, T, cell.hidden_size), jnp.float64)
    ref = _value_and_grads(lambda p, x, s: _literal(cell, p, x, s, [T] * B, None, True),
                           params, xs, state0, w)
    got = _value_and_grads(lambda p, x, s: seqjax.scan(cell, p, x, initial_state=s,
                                                       reverse=True), params, xs, state0, w)
    assert_trees_close(got, ref, rtol=1e-10, atol=1e-11)


def test_reverse_is_flax_keep_order_reverse_and_padding_stays_zero():
  """nn.RNN(reverse=True, keep_order=True) with seq_lengths computes the same outputs at the
  valid steps (flax leaves its own values at padded ones, seqjax zeros)."""
  from flax import linen as nn
  from seqjax.interop import LinenCell
  cell = cells.gru(H)
  xs = jax.random.normal(jax.random.key(2), (B, T, F))
  lengths = jnp.array([T, 2, 4, 1])
  rnn = nn.RNN(LinenCell(cell), reverse=True, keep_order=True)
  variables = rnn.init(jax.random.key(0), xs)
  flax_hs = rnn.apply(variables, xs, seq_lengths=lengths)
  _, hs = seqjax.scan(cell, variables["params"]["cell"]["cell"], xs, lengths=lengths,
                      reverse=True)
  valid = (jnp.arange(T)[None] < lengths[:, None])[..., None]
  np.testing.assert_allclose(jnp.where(valid, flax_hs, 0), hs, rtol=1e-6, atol=1e-6)
  assert not np.asarray(jnp.where(valid, 0, hs)).any()


def test_unbatched_reverse_with_resets():
  cell = cells.lstm(H)
  params = cell.init(jax.random.key(0), F)
  xs = jax.random.normal(jax.random.key(1), (T, F))
  resets = jnp.arange(T) % 3 == 0
  state, hs = seqjax.scan(cell, params, xs, reverse=True, resets=resets)
  ref_state, ref_hs = _literal(cell, params, xs[None], cell.initial_state(params, (1,)), [T],
                               resets[None], True)
  assert_trees_close((state, hs), jax.tree.map(lambda v: v[0], (ref_state, ref_hs)),
                     rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("resets, message", [
    (jnp.zeros((B, T + 1), bool), r"resets must have the shape \[\*batch, T\]"),
    (jnp.zeros((B, T), jnp.int32), "resets must be booleans"),
])
def test_bad_resets_are_named(resets, message):
  cell = cells.rnn(H)
  with pytest.raises(ValueError, match=message):
    seqjax.scan(cell, cell.init(jax.random.key(0), F), jnp.zeros((B, T, F)), resets=resets)
