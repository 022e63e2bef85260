"""rda and min_rda (the RWA with a forget gate): what the generic cell / scan / min-cell tests
don't cover — f ≡ 1 is the rwa / min_rwa, saturated attention and gates, the hand-written
backward where autodiff would cancel, min_rda's associative combine, the init."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax.cells.min_rda import _combine as combine
from seqjax import cells
from helpers import (assert_directional_derivatives, assert_long_run_finite_and_close_to_float64,
                     assert_trees_close, loop, random_params)
import numpy_refs

F, H = 3, 4
# (cell name, parallel): rda, and min_rda over both of its paths
VARIANTS = {"rda": ("rda", None), "min_rda/associative": ("min_rda", True),
            "min_rda/loop": ("min_rda", False)}
WITHOUT_FORGETTING = {"rda": "rwa", "min_rda": "min_rwa"}


def _make(variant):
  name, parallel = VARIANTS[variant]
  return cells.rda(H) if parallel is None else cells.min_rda(H, parallel=parallel)


def _problem(variant, B=3, T=8, key=0, dtype=jnp.float32):
  cell = _make(variant)
  kp, kr, kx = jax.random.split(jax.random.key(key), 3)
  params = random_params(cell.init(kp, F), kr, scale=1.0)
  xs = jax.random.normal(kx, (B, T, F))
  return cell, *jax.tree.map(lambda v: v.astype(dtype), (params, xs))


def _sharpen(params, attention=1.0, forget_bias=None):
  """Attention logits scaled by `attention`; b_f set to `forget_bias` (None: kept)."""
  out = {k: v * attention if k.startswith("W_a") else v for k, v in params.items()}
  if forget_bias is not None:
    out["b_f"] = jnp.full_like(params["b_f"], forget_bias)
  return out


def test_rda_scan_with_lengths_equals_the_direct_discounted_sums():
  T = 8
  cell, params, xs = _problem("rda", T=T)
  lengths = [0, T, 4]
  state, hs = seqjax.scan(cell, params, xs, lengths=jnp.array(lengths))
  for b, L in enumerate(lengths):
    expected = numpy_refs.rda(params, xs[b])
    np.testing.assert_allclose(hs[b, :L], expected[:L], rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(hs[b, L:], 0)
    np.testing.assert_allclose(state.h[b], expected[L - 1] if L else jnp.tanh(params["s0"]),
                               rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forget_gate_at_one_is_the_cell_without_forgetting(variant):
  """b_f = 60: log σ ≈ -1e-26, so f rounds to 1 and the cell equals the rwa / min_rwa with the
  shared params: values, final state and the shared params' gradients."""
  cell, params, xs = _problem(variant)
  params = _sharpen(params, forget_bias=60.0)
  name, parallel = VARIANTS[variant]
  kw = {} if parallel is None else dict(parallel=parallel)
  plain = getattr(cells, WITHOUT_FORGETTING[name])(H, **kw)
  shared = {k: params[k] for k in plain.init(jax.random.key(0), F)}
  lengths = jnp.array([8, 0, 5])
  w = jax.random.normal(jax.random.key(1), (3, 8, H))

  def run(cell, p):
    def loss(p):
      state, hs = seqjax.scan(cell, p, xs, lengths=lengths)
      return jnp.sum(hs * w) + jnp.sum(state.h), (tuple(state), hs)
    return jax.value_and_grad(loss, has_aux=True)(p)

  (v, out), g = run(cell, params)
  (v_ref, out_ref), g_ref = run(plain, shared)
  assert_trees_close((v, out), (v_ref, out_ref), rtol=1e-6, atol=1e-6)
  assert_trees_close({k: g[k] for k in shared}, g_ref, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(g["b_f"]).max()) < 1e-20  # σ'(60)-sized: the gate is shut


@pytest.mark.parametrize("forget_bias", [-50.0, 50.0])
@pytest.mark.parametrize("variant", VARIANTS)
def test_first_step_is_exact(variant, forget_bias):
  """m_0 + log f is clamped at the most negative float, never -inf: d = 1, h = tanh(n) exactly."""
  cell, params, xs = _problem(variant, T=1)
  params = _sharpen(params, forget_bias=forget_bias)
  state, hs = seqjax.scan(cell, params, xs)
  np.testing.assert_array_equal(state.d, 1.0)
  np.testing.assert_array_equal(hs[:, 0], jnp.tanh(state.n))
  reference = numpy_refs.REFERENCES[VARIANTS[variant][0]]
  for b in range(xs.shape[0]):
    np.testing.assert_allclose(hs[b], reference(params, xs[b]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant, forget_bias", [
    ("rda", -50.0), ("rda", 50.0), ("min_rda/loop", -50.0), ("min_rda/loop", 50.0),
    ("min_rda/associative", -50.0)])  # (at +50 it is min_rwa's case, tested there)
@pytest.mark.slow
def test_saturated_attention_and_gates_over_2000_steps_stay_finite_and_accurate(variant,
                                                                                  forget_bias):
  """Attention logits ×10^3, b_f at ±50 (f ≈ 2e-22 or 1 - 2e-22), 2,000 steps: values and
  gradients finite, d ≥ 1, values equal to float64's."""
  cell, params, xs = _problem(variant, B=2, T=2000, key=4)
  params = _sharpen(params, attention=1e3, forget_bias=forget_bias)
  # float32 rounds each logit ~10^3 by ~6e-5, which moves its weight e^{a - m} by that much
  assert_long_run_finite_and_close_to_float64(cell, params, xs, atol=1e-3)


@pytest.mark.parametrize("attention, forget_bias", [(1e3, -50.0), (1e3, 50.0), (1.0, -50.0),
                                                    (30.0, 0.0)])
def test_rda_backward_is_exact_where_attention_or_gate_saturates(attention, forget_bias):
  """seqjax.scan's backward for the rda (its own rule, carrying dd + dn·q): float32 gradients
  equal the float64 autodiff of the literal step loop, also where attention or gate saturate
  (the ~0 gradients of W_a included)."""
  cell, params, xs = _problem("rda", B=2, T=7, key=8)
  params = _sharpen(params, attention=attention, forget_bias=forget_bias)
  loss = lambda p, xs: jnp.sum(seqjax.scan(cell, p, xs)[1] ** 2)
  g32 = jax.grad(loss)(params, xs)
  with jax.enable_x64(True):
    p64, x64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), (params, xs))
    g64 = jax.grad(lambda p: jnp.sum(loop(cell, p, x64)[1] ** 2))(p64)
  # JAX's own float32 autodiff of the same loop: its error is the scale float32 allows here
  auto32 = jax.grad(lambda p: jnp.sum(loop(cell, p, xs)[1] ** 2))(params)
  for k in g64:
    # saturated attention: W_a's and the gate's exact gradients are ~1e-16 (autodiff of the
    # step in float32 leaves ~3e-7 of noise in them, and ~1e-4 relative in W_u's)
    saturated = attention >= 1e3 and k in ("W_ax", "W_ah", "W_fx", "W_fh", "b_f")
    # sharp attention (a ~ 30) amplifies float32 rounding: no more than twice autodiff's error
    # (W_gh at a = 30 on this CPU: autodiff 4.8e-5, the hand-written backward 3.1e-5)
    autodiff_error = float(np.abs(np.asarray(auto32[k], np.float64) - g64[k]).max())
    tol = 1e-12 if saturated else max(1e-5 * max(float(np.abs(g64[k]).max()), 1.0),
                                      2 * autodiff_error)
    np.testing.assert_allclose(g32[k], g64[k], rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scan_gradients_match_float64_central_differences(variant):
  """Sharp attention and a gate that forgets most of the past, lengths 0, T and between."""
  with jax.enable_x64(True):
    cell, params, xs = _problem(variant, T=7, key=2, dtype=jnp.float64)
    params = _sharpen(params, attention=6.0, forget_bias=-2.0)
    lengths = jnp.array([7, 0, 4])
    w = jax.random.normal(jax.random.key(10), (3, 7, H), jnp.float64)
    loss = lambda p, x: jnp.sum(seqjax.scan(cell, p, x, lengths=lengths)[1] * w)
    grads = jax.grad(loss, argnums=(0, 1))(params, xs)
    assert float(jnp.abs(grads[0]["b_f"]).max()) > 1e-3
    assert_directional_derivatives(loss, (params, xs), grads,
                                   [jax.random.key(100 + seed) for seed in range(2)], atol=1e-9)


def test_min_rda_combine_has_its_identity_and_is_associative():
  """Random stretches (L ≤ 0, any m): identity on either side, (A B) C = A (B C), and a
  stretch discounting by -3e38 after the identity stays finite (m_0 + L clamped, not -inf)."""
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(0), 3)

    def stretch(key):
      kl, km, kn, kd = jax.random.split(key, 4)
      return (-jnp.abs(jax.random.normal(kl, (5,), jnp.float64)) * 3,
              jax.random.normal(km, (5,), jnp.float64) * 4,
              jax.random.normal(kn, (5,), jnp.float64),
              jnp.abs(jax.random.normal(kd, (5,), jnp.float64)) + 1)

    A, B, C = (stretch(k) for k in keys)
    identity = (jnp.zeros(5), jnp.full(5, jnp.finfo(jnp.float64).min), jnp.zeros(5), jnp.zeros(5))
    assert_trees_close(combine(identity, A), A, rtol=0, atol=0)
    assert_trees_close(combine(A, identity), A, rtol=0, atol=0)
    assert_trees_close(combine(combine(A, B), C), combine(A, combine(B, C)), rtol=1e-14,
                       atol=1e-14)
    # (L, m, n, d) is the discounted sum scaled by e^{-m}: check one combine against it
    L, m, n, d = combine(A, B)
    np.testing.assert_allclose(n * jnp.exp(m), A[2] * jnp.exp(A[1] + B[0]) + B[2] * jnp.exp(B[1]),
                               rtol=1e-13)
    np.testing.assert_allclose(L, A[0] + B[0], rtol=1e-15)
  lowest = jnp.finfo(jnp.float32).min
  identity32 = (jnp.zeros(2), jnp.full(2, lowest), jnp.zeros(2), jnp.zeros(2))
  huge = (jnp.full(2, -3e38), jnp.array([lowest, 0.0]), jnp.ones(2), jnp.ones(2))
  out = combine(combine(identity32, huge), huge)
  assert all(np.isfinite(v).all() for v in out)


def test_init_follows_the_rwa_and_forget_bias_sets_b_f():
  Fb, Hb = 20, 300  # large enough for the bound checks to be sharp
  key = jax.random.key(2)
  params = cells.rda(Hb, forget_bias=2.5).init(key, Fb)
  rwa_params = cells.rwa(Hb).init(jax.random.split(key)[0], Fb)
  assert_trees_close({k: params[k] for k in rwa_params}, rwa_params, rtol=0, atol=0)
  bound = np.sqrt(6 / (Fb + Hb + Hb))  # W_f: fan-in F + H, fan-out H, as W_g and W_a
  for k in ["W_fx", "W_fh"]:
    assert bound >= np.abs(params[k]).max() > 0.95 * bound
  np.testing.assert_array_equal(params["b_f"], 2.5)
  np.testing.assert_array_equal(cells.rda(4).init(key, 3)["b_f"], 1.0)
  small = cells.min_rda(4, forget_bias=-1.5).init(key, 3)
  np.testing.assert_array_equal(small["b_f"], -1.5)
  np.testing.assert_array_equal(small["b_u"], 0)
  np.testing.assert_array_equal(small["b_g"], 0)
  assert cells.RDAState._fields == cells.MinRDAState._fields == ("h", "n", "d", "m")
  for bad in [float("nan"), float("inf"), "1", True, None]:
    for make in (cells.rda, cells.min_rda):
      with pytest.raises(ValueError, match="forget_bias must be a finite number"):
        make(4, forget_bias=bad)


def test_the_forget_bias_example_factories_build_rda_with_that_bias():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "examples", "forget_bias.py")
  namespace = {}
  exec(compile(open(path).read(), path, "exec"), namespace)
  key, xs = jax.random.key(0), jax.random.normal(jax.random.key(1), (2, 5, 3))
  for b_f in (1, 3, 5):
    cell = namespace[f"rda_b{b_f}"](4)
    params = cell.init(key, 3)
    np.testing.assert_array_equal(params["b_f"], np.full(4, b_f, np.float32))
    want = cells.rda(4, forget_bias=float(b_f))
    assert_trees_close(seqjax.scan(cell, params, xs), seqjax.scan(want, want.init(key, 3), xs),
                       rtol=0, atol=0)
