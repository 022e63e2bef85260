"""Each cell against float64 NumPy references, finite differences, and its documented init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import cells
from helpers import assert_directional_derivatives, assert_trees_close, loop, random_params
import numpy_refs

NAMES = cells.NAMES
F, H, T = 3, 5, 7

LAYOUT = {
    "rnn": {"W_x": (F, H), "W_h": (H, H), "b": (H,)},
    "lstm": {"W_x": (F, 4 * H), "W_h": (H, 4 * H), "b": (4 * H,)},
    "gru": {"W_x": (F, 3 * H), "W_h": (H, 3 * H), "b_x": (3 * H,), "b_h": (3 * H,)},
    "rwa": {"W_u": (F, H), "b_u": (H,), "W_gx": (F, H), "W_gh": (H, H), "b_g": (H,),
            "W_ax": (F, H), "W_ah": (H, H), "s0": (H,)},
    "rda": {"W_u": (F, H), "b_u": (H,), "W_gx": (F, H), "W_gh": (H, H), "b_g": (H,),
            "W_ax": (F, H), "W_ah": (H, H), "s0": (H,), "W_fx": (F, H), "W_fh": (H, H),
            "b_f": (H,)},
    "min_rwa": {"W_u": (F, H), "W_g": (F, H), "W_a": (F, H), "b_u": (H,), "b_g": (H,)},
    "min_rda": {"W_u": (F, H), "W_g": (F, H), "W_a": (F, H), "W_f": (F, H), "b_u": (H,),
                "b_g": (H,), "b_f": (H,)},
    "min_gru": {"W_z": (F, H), "W_h": (F, H), "b_z": (H,), "b_h": (H,)},
    "min_lstm": {"W_f": (F, H), "W_i": (F, H), "W_h": (F, H), "b_f": (H,), "b_i": (H,),
                 "b_h": (H,)},
}


@pytest.mark.parametrize("name", NAMES)
def test_param_layout_is_the_contract(name):
  cell = cells.get(name, hidden_size=H)
  params = cell.init(jax.random.key(0), input_size=F)
  assert {k: v.shape for k, v in params.items()} == LAYOUT[name]
  assert all(v.dtype == jnp.float32 for v in params.values())
  assert cell.name == name and cell.hidden_size == H


def test_get_is_the_factory():
  key = jax.random.key(3)
  for name in NAMES:
    a = cells.get(name, hidden_size=H).init(key, F)
    b = getattr(cells, name)(H).init(key, F)
    assert_trees_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_blocks_are_orthogonal_and_biases_documented(name):
  cell = cells.get(name, hidden_size=H)
  params = cell.init(jax.random.key(1), input_size=F)
  W_h = np.asarray(params["W_h"], np.float64)
  for k in range(W_h.shape[1] // H):
    block = W_h[:, k * H:(k + 1) * H]
    np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
  if name == "lstm":
    expected = np.zeros(4 * H)
    expected[H:2 * H] = 1.0  # forget gate, second in i, f, g, o
    np.testing.assert_array_equal(params["b"], expected)
  else:
    np.testing.assert_array_equal(params["b_x"], 0)
    np.testing.assert_array_equal(params["b_h"], 0)


def test_rwa_init_follows_the_authors_code():
  Fb, Hb = 20, 300  # large enough for the distribution checks to be sharp
  params = cells.rwa(Hb).init(jax.random.key(2), input_size=Fb)
  bound_u = np.sqrt(6 / (Fb + Hb))
  bound_ga = np.sqrt(6 / (Fb + Hb + Hb))  # W_g, W_a: fan-in F + H, fan-out H
  assert np.abs(params["W_u"]).max() <= bound_u
  assert np.abs(params["W_u"]).max() > 0.95 * bound_u
  for k in ["W_gx", "W_gh", "W_ax", "W_ah"]:
    assert np.abs(params[k]).max() <= bound_ga
    assert np.abs(params[k]).max() > 0.95 * bound_ga
  np.testing.assert_array_equal(params["b_u"], 0)
  np.testing.assert_array_equal(params["b_g"], 0)
  s0 = np.asarray(params["s0"])
  assert abs(s0.mean()) < 0.2 and 0.85 < s0.std() < 1.15
  assert not np.array_equal(params["W_gx"][0], params["W_ax"][0])


def _problem(name, key, dtype=jnp.float32, B=2):
  cell = cells.get(name, hidden_size=H)
  kp, kr, kx = jax.random.split(key, 3)
  params = random_params(cell.init(kp, F), kr)
  params = jax.tree.map(lambda v: v.astype(dtype), params)
  xs = jax.random.normal(kx, (B, T, F), dtype)
  return cell, params, xs


@pytest.mark.parametrize("name", NAMES)
def test_step_matches_float64_numpy_reference(name):
  cell, params, xs = _problem(name, jax.random.key(4))
  _, hs = loop(cell, params, xs)
  for b in range(xs.shape[0]):
    expected = numpy_refs.REFERENCES[name](params, xs[b])
    np.testing.assert_allclose(hs[b], expected, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name", NAMES)
def test_step_in_float64_matches_reference_to_rounding(name):
  with jax.enable_x64(True):
    cell, params, xs = _problem(name, jax.random.key(5), jnp.float64)
    _, hs = loop(cell, params, xs)
    assert hs.dtype == jnp.float64
    for b in range(xs.shape[0]):
      np.testing.assert_allclose(hs[b], numpy_refs.REFERENCES[name](params, xs[b]),
                                 rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("scale", [1.0, 100.0, 3000.0])
def test_rwa_equals_direct_weighted_average_for_any_size_of_a(scale):
  """a_t scaled into the thousands: e^a overflows even float64, the running-max form must not."""
  cell, params, xs = _problem("rwa", jax.random.key(6), B=3)
  params = dict(params, W_ax=params["W_ax"] * scale, W_ah=params["W_ah"] * scale)
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
    _, hs64 = loop(cell, p64, jnp.asarray(xs, jnp.float64))
    a_max = float(jnp.abs(jnp.asarray(xs, jnp.float64) @ p64["W_ax"]).max())
  _, hs32 = loop(cell, params, xs)
  assert a_max > 0.3 * scale  # the test really exercises |a| of this size
  for b in range(xs.shape[0]):
    expected = numpy_refs.rwa(params, xs[b])
    np.testing.assert_allclose(hs64[b], expected, rtol=1e-12, atol=1e-12)
    # float32 rounds a itself by ~|a|·6e-8, which moves the weights e^{a - m} by that much.
    np.testing.assert_allclose(hs32[b], expected, rtol=0, atol=2e-6 * max(1.0, scale))
  assert np.isfinite(hs32).all()


def test_rwa_first_step_is_exact():
  cell, params, xs = _problem("rwa", jax.random.key(7))
  x = xs[:, 0]
  state, h = cell.step(params, cell.initial_state(params, (2,)), x)
  h0 = jnp.tanh(params["s0"])
  u = x @ params["W_u"] + params["b_u"][None]
  z = u * jnp.tanh(x @ params["W_gx"] + (h0 @ params["W_gh"] + params["b_g"])[None])
  np.testing.assert_array_equal(state.d, 1.0)
  np.testing.assert_array_equal(h, jnp.tanh(state.n))  # n/d with d exactly 1: nothing from m_0
  np.testing.assert_allclose(state.n, z, rtol=1e-6, atol=1e-7)  # (matmul order may differ by an ulp)
  np.testing.assert_allclose(state.m, x @ params["W_ax"] + (h0 @ params["W_ah"])[None],
                             rtol=1e-6, atol=1e-7)  # m = a_1 (up to the product's rounding)


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_rwa_attention_logits_in_the_thousands_give_finite_accurate_gradients(scale):
  """|a| ~ 10^3..10^4 (e^a overflows float64): values and gradients finite, and the float32
  gradients of everything but W_a equal float64's. (W_a's own gradient is ~0 in exact arithmetic
  here; float32 autodiff of the step's n/d leaves eps-sized noise in it, which seqjax.scan's own
  backward rule avoids: see test_scan.py and BUILD_NOTES.md.)"""
  cell, params, xs = _problem("rwa", jax.random.key(8))
  params = dict(params, W_ax=params["W_ax"] * scale, W_ah=params["W_ah"] * scale)

  def loss(params, xs):
    _, hs = loop(cell, params, xs)
    return jnp.sum(hs ** 2)

  value, (g32, gx32) = jax.value_and_grad(loss, argnums=(0, 1))(params, xs)
  assert np.isfinite(value)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves((g32, gx32)))
  with jax.enable_x64(True):
    g64 = jax.grad(loss)(*jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), (params, xs)))
  for k in ["W_u", "b_u", "W_gx", "W_gh", "b_g", "s0"]:
    np.testing.assert_allclose(g32[k], g64[k], rtol=0, atol=1e-2 * float(np.abs(g64[k]).max()))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_float64_central_differences(name):
  with jax.enable_x64(True):
    cell, params, xs = _problem(name, jax.random.key(9), jnp.float64)
    if name in ("rwa", "rda"):  # sharp attention, as after training: |a| ~ 10
      params = dict(params, W_ax=params["W_ax"] * 8, W_ah=params["W_ah"] * 8)
    if name in ("min_rwa", "min_rda"):
      params = dict(params, W_a=params["W_a"] * 8)
    w = jax.random.normal(jax.random.key(10), (xs.shape[0], T, H), jnp.float64)

    def loss(params, xs):
      _, hs = loop(cell, params, xs)
      return jnp.sum(hs * w)

    grads = jax.grad(loss, argnums=(0, 1))(params, xs)
    assert_directional_derivatives(loss, (params, xs), grads,
                                   [jax.random.key(100 + seed) for seed in range(3)], atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_step_any_batch_shape_jit_and_vmap(name):
  cell, params, xs = _problem(name, jax.random.key(11), B=6)
  _, hs = loop(cell, params, xs)
  # unbatched: batch_shape ()
  _, h_single = loop(cell, params, xs[2])
  np.testing.assert_allclose(h_single, hs[2], rtol=1e-6, atol=1e-6)
  # two batch dims
  _, h_grid = loop(cell, params, xs.reshape(2, 3, T, F))
  np.testing.assert_allclose(h_grid.reshape(6, T, H), hs, rtol=1e-6, atol=1e-6)
  # vmap of the unbatched step, and jit
  step = jax.jit(jax.vmap(cell.step, in_axes=(None, 0, 0)))
  state = cell.initial_state(params, (6,))
  for t in range(T):
    state, h = step(params, state, xs[:, t])
  np.testing.assert_allclose(h, hs[:, -1], rtol=1e-6, atol=1e-6)


def test_cell_state_fields_are_named():
  assert cells.LSTMState._fields == ("h", "c")
  assert cells.RWAState._fields == ("h", "n", "d", "m")
  params = cells.lstm(H).init(jax.random.key(0), F)
  state = cells.lstm(H).initial_state(params, (2,))
  assert isinstance(state, cells.LSTMState) and state.h.shape == (2, H)


@pytest.mark.parametrize("name", NAMES)
def test_low_precision_inputs_keep_float32_state(name):
  cell, params, xs = _problem(name, jax.random.key(12))
  state, h = cell.step(params, cell.initial_state(params, (2,)), xs[:, 0].astype(jnp.bfloat16))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state))
  _, h32 = cell.step(params, cell.initial_state(params, (2,)),
                     xs[:, 0].astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(h, h32, rtol=1e-6, atol=1e-6)


# Documented bounds for dtype=bfloat16 (BUILD_NOTES.md): over 100 steps with H = 32 and the
# default init, |h_bf16 - h_f32| <= 0.02 and the gradient's relative error <= 3% per param.
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_bfloat16_matmuls_keep_float32_state_and_stay_within_the_documented_bounds(name):
  c32, c16 = cells.get(name, 32), cells.get(name, 32, dtype=jnp.bfloat16)
  params = c32.init(jax.random.key(0), F)
  xs = jax.random.normal(jax.random.key(1), (8, 100, F))
  (_, h32), (s16, h16) = seqjax.scan(c32, params, xs), seqjax.scan(c16, params, xs)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((s16, h16)))
  err = float(jnp.abs(h16 - h32).max())
  assert 1e-5 < err < 0.02  # > 1e-5: the products really ran in bfloat16
  loss = lambda cell: jax.grad(lambda p: jnp.sum(seqjax.scan(cell, p, xs)[1] ** 2))(params)
  g32, g16 = loss(c32), loss(c16)
  for k in g32:
    assert g16[k].dtype == jnp.float32
    norm = float(jnp.linalg.norm(g32[k]))
    if norm > 0:
      assert float(jnp.linalg.norm(g16[k] - g32[k])) <= 0.03 * norm, k


def test_dtype_must_be_a_float_dtype():
  for bad in ["int8", jnp.int32, "nope"]:
    with pytest.raises(ValueError, match="dtype must be None or a float dtype"):
      cells.get("lstm", 4, dtype=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_bad_sizes_are_rejected_clearly(bad):
  with pytest.raises(ValueError, match="hidden_size"):
    cells.rwa(bad)
  with pytest.raises(ValueError, match="input_size"):
    cells.lstm(4).init(jax.random.key(0), bad)


def test_get_rejects_unknown_names_and_layer_counts():
  allowed = "allowed: rnn, lstm, gru, rwa, rda, min_rwa, min_rda, min_gru, min_lstm"
  with pytest.raises(ValueError, match=allowed):
    cells.get("transformer", hidden_size=4)
  for bad in [0, 1.0, True]:
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
      cells.get("rwa", hidden_size=4, num_layers=bad)
  assert cells.get("gru", hidden_size=np.int64(4), num_layers=np.int32(2)).hidden_size == 4
