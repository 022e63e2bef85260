"""The min cells (min_rwa, min_rda, min_gru, min_lstm): seqjax.scan runs them over all steps at once
(jax.lax.associative_scan) or as a loop over their elementwise part; both paths against float64
NumPy loops of the equations, the literal loop of `step`, and each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import cells
from helpers import (assert_directional_derivatives, assert_long_run_finite_and_close_to_float64,
                     assert_trees_close, loop, random_params, scan_in_pieces)
import numpy_refs

F, H = 3, 4
MIN = ("min_rwa", "min_rda", "min_gru", "min_lstm")
PATHS = {"associative": True, "loop": False}


def _problem(name, path, batch=(3,), T=9, key=0, dtype=jnp.float32, input_size=F):
  cell = getattr(cells, name)(H, parallel=PATHS[path])
  kp, kr, kx = jax.random.split(jax.random.key(key), 3)
  params = random_params(cell.init(kp, input_size), kr, scale=1.0)
  xs = jax.random.normal(kx, (*batch, T, input_size)) / np.sqrt(input_size / F)
  return cell, *jax.tree.map(lambda v: v.astype(dtype), (params, xs))


def _lengths_for(batch, T):
  """0, T and values between, over the batch shape."""
  n = int(np.prod(batch))
  return jnp.asarray(np.resize([0, T, T // 2, 1, T - 1, 3], n).reshape(batch), jnp.int32)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MIN)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.slow
def test_scan_and_step_equal_numpy_loop_with_lengths(name, path, batch):
  T = 8
  cell, params, xs = _problem(name, path, batch, T)
  lengths = _lengths_for(batch, T) if batch else jnp.asarray(5)
  state, hs = jax.jit(lambda p, x, L: seqjax.scan(cell, p, x, lengths=L))(params, xs, lengths)
  _, hs_step = loop(cell, params, xs)
  flat_x, flat_h, flat_hs = (v.reshape(-1, T, v.shape[-1]) for v in (xs, hs, hs_step))
  flat_len = np.asarray(lengths).reshape(-1)
  flat_state_h = state.h.reshape(-1, H)
  for b, L in enumerate(flat_len):
    expected = numpy_refs.REFERENCES[name](params, flat_x[b])
    np.testing.assert_allclose(flat_hs[b], expected, rtol=1e-5, atol=1e-5)  # step
    np.testing.assert_allclose(flat_h[b, :L], expected[:L], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(flat_h[b, L:], 0)
    np.testing.assert_allclose(flat_state_h[b], expected[L - 1] if L else 0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MIN)
@pytest.mark.parametrize("input_size", [F, 40])  # 40: the loop over hoisted projections
@pytest.mark.slow
def test_associative_path_equals_loop_path(name, input_size):
  T = 13
  lengths = jnp.array([13, 0, 6])
  got = {}
  for path in PATHS:
    cell, params, xs = _problem(name, path, T=T, key=3, input_size=input_size)
    state0, _ = seqjax.scan(cell, params, xs[:, :4])

    def loss(p, x, s):
      state, hs = seqjax.scan(cell, p, x, lengths=lengths, initial_state=s)
      return jnp.sum(jnp.sin(hs)) + jnp.sum(jnp.tanh(state.h)), (state, hs)

    got[path] = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, state0)
  assert_trees_close(got["associative"], got["loop"], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MIN)
@pytest.mark.slow
def test_streaming_in_pieces_equals_one_scan(name, path):
  T = 11
  cell, params, xs = _problem(name, path, T=T)
  lengths = jnp.array([11, 4, 0])
  whole = seqjax.scan(cell, params, xs, lengths=lengths)
  for cuts in [(5,), (1, 4, 10), (0, 11)]:
    assert_trees_close(scan_in_pieces(cell, params, xs, lengths, cuts), whole,
                       rtol=1e-5, atol=1e-6)


def _literal_with_lengths(cell, params, xs, lengths, state0):
  states, hs = [], []
  for b, L in enumerate(lengths):
    s, h = loop(cell, params, xs[b, :L], jax.tree.map(lambda v: v[b], state0))
    states.append(s)
    hs.append(jnp.concatenate([h, jnp.zeros((xs.shape[1] - L, h.shape[-1]), h.dtype)]))
  return jax.tree.map(lambda *v: jnp.stack(v), *states), jnp.stack(hs)


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", [*MIN, "lstm+min_rwa+min_gru"])
@pytest.mark.slow
def test_gradients_equal_the_literal_step_loop_in_float64(name, path, remat):
  """Params, inputs and initial state; lengths 0, T and between; remat; a mixed stack."""
  T = 10
  with jax.enable_x64(True):
    if "+" in name:
      cell = cells.stack([cells.lstm(5), cells.min_rwa(6, parallel=PATHS[path]),
                          cells.min_gru(H, parallel=PATHS[path])])
      kp, kr, kx = jax.random.split(jax.random.key(1), 3)
      params = random_params(cell.init(kp, F), kr, scale=1.0)
      xs = jax.random.normal(kx, (3, T, F))
      params, xs = jax.tree.map(lambda v: v.astype(jnp.float64), (params, xs))
    else:
      cell, params, xs = _problem(name, path, T=T, key=1, dtype=jnp.float64)
    state0, _ = seqjax.scan(cell, params, jax.random.normal(jax.random.key(5), (3, 4, F),
                                                            jnp.float64))
    lengths = [T, 0, 6]
    w = jax.random.normal(jax.random.key(6), (3, T, H), jnp.float64)

    def loss(run):
      def f(params, xs, state0):
        state, hs = run(params, xs, state0)
        return jnp.sum(hs * w) + sum(jnp.sum(jnp.tanh(v)) for v in jax.tree.leaves(state)
                                     if jnp.abs(v).max() < 1e10)  # (not m's -inf stand-in)
      return jax.value_and_grad(f, argnums=(0, 1, 2))(params, xs, state0)

    got = loss(lambda p, x, s: seqjax.scan(cell, p, x, lengths=jnp.array(lengths),
                                           initial_state=s, remat=remat, unroll=2))
    ref = loss(lambda p, x, s: _literal_with_lengths(cell, p, x, lengths, s))
    assert_trees_close(got, ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("name", MIN)
@pytest.mark.slow
def test_scan_gradients_match_float64_central_differences(name):
  with jax.enable_x64(True):
    cell, params, xs = _problem(name, "associative", T=7, key=2, dtype=jnp.float64)
    lengths = jnp.array([7, 2, 5])
    w = jax.random.normal(jax.random.key(10), (3, 7, H), jnp.float64)
    loss = lambda p, x: jnp.sum(seqjax.scan(cell, p, x, lengths=lengths)[1] * w)
    grads = jax.grad(loss, argnums=(0, 1))(params, xs)
    assert_directional_derivatives(loss, (params, xs), grads,
                                   [jax.random.key(100 + seed) for seed in range(2)], atol=1e-9)


@pytest.mark.parametrize("path, input_size", [("associative", F), ("loop", F), ("loop", 40)])
@pytest.mark.parametrize("name", MIN)
@pytest.mark.parametrize("garbage", [np.nan, np.inf, -1e30])
@pytest.mark.slow
def test_padding_garbage_gives_what_clean_padding_gives(name, path, input_size, garbage):
  T = 8
  cell, params, xs = _problem(name, path, T=T, input_size=input_size)
  lengths = jnp.array([2, T, 0])
  pad = jnp.arange(T)[None, :, None] >= lengths[:, None, None]
  dirty = jnp.where(pad, jnp.asarray(garbage, xs.dtype), xs)
  clean = jnp.where(pad, 0.0, xs)

  def value_and_grads(xs, **kw):
    def loss(p, x):
      state, hs = seqjax.scan(cell, p, x, lengths=lengths, **kw)
      return jnp.sum(jnp.cos(hs)) + jnp.sum(state.h)
    return jax.value_and_grad(loss, argnums=(0, 1))(params, xs)

  for kw in [{}, dict(remat=True)]:
    v_dirty, (gp_dirty, gx_dirty) = value_and_grads(dirty, **kw)
    v_clean, (gp_clean, gx_clean) = value_and_grads(clean, **kw)
    assert np.isfinite(v_dirty)
    assert_trees_close((v_dirty, gp_dirty, gx_dirty), (v_clean, gp_clean, gx_clean),
                       rtol=0, atol=0)
    np.testing.assert_array_equal(jnp.where(pad, gx_dirty, 0), 0)


@pytest.mark.parametrize("path", PATHS)
def test_min_rwa_first_step_is_exact(path):
  cell, params, xs = _problem("min_rwa", path, T=1)
  state, hs = seqjax.scan(cell, params, xs)
  x = xs[:, 0]
  z = (x @ params["W_u"] + params["b_u"][None]) * jnp.tanh(x @ params["W_g"] + params["b_g"][None])
  np.testing.assert_array_equal(state.d, 1.0)
  np.testing.assert_array_equal(hs[:, 0], jnp.tanh(state.n))
  np.testing.assert_allclose(state.n, z, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_min_rwa_huge_scores_and_long_sequences_stay_finite(path):
  """Attention scores x1000 over 2*10^4 steps: values and gradients finite, values equal to
  float64's, and d >= 1 (nothing underflowed to 0/0)."""
  T = 20_000
  cell, params, xs = _problem("min_rwa", path, batch=(2,), T=T, key=4)
  params = dict(params, W_a=params["W_a"] * 1e3)
  # float32 rounds each score a ~ 10^3 by ~6e-5, which moves its weight e^{a - m} by that much
  assert_long_run_finite_and_close_to_float64(cell, params, xs, atol=1e-3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.slow
def test_min_lstm_gates_that_both_underflow_give_no_nan(path):
  """f and i both ~e^-200 (0 in float32): f/(f+i) is still defined, and so is its gradient."""
  cell, params, xs = _problem("min_lstm", path, T=5)
  params = dict(params, b_f=params["b_f"] - 200.0, b_i=params["b_i"] - 203.0)
  loss = lambda p: jnp.sum(seqjax.scan(cell, p, xs)[1] ** 2)
  value, grads = jax.value_and_grad(loss)(params)
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    np.testing.assert_allclose(seqjax.scan(cell, p64, jnp.asarray(xs, jnp.float64))[1],
                               seqjax.scan(cell, params, xs)[1], rtol=0, atol=2e-5)  # logits ~200: eps·200


def test_parallel_argument_is_checked_and_autodiff_backward_keeps_min_cells():
  with pytest.raises(ValueError, match="parallel must be None, True or False"):
    cells.min_gru(4, parallel="yes")
  cell = cells.min_rwa(4)
  assert cells.autodiff_backward(cell) is cell  # already plain autodiff; forward mode works
  params = cell.init(jax.random.key(0), F)
  xs = jax.random.normal(jax.random.key(1), (2, 5, F))
  f = lambda p: jnp.sum(seqjax.scan(cell, p, xs)[1])
  tangent = random_params(params, jax.random.key(2))
  _, jvp = jax.jvp(f, (params,), (tangent,))
  g = jax.grad(f)(params)
  np.testing.assert_allclose(jvp, sum(jnp.vdot(g[k], tangent[k]) for k in g), rtol=1e-4)
