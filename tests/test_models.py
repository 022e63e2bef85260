"""Readouts and the closed loop (stateful prediction) against literal per-step definitions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells, models
from helpers import assert_directional_derivatives, loop, random_params

F, H, O = 2, 4, 1


def _model(name="rwa", key=0):
  cell = cells.get(name, hidden_size=H)
  params = random_params(models.init(cell, jax.random.key(key), F, O), jax.random.key(key + 1))
  return cell, params


def _readout(params, h):
  return np.asarray(h) @ np.asarray(params["readout"]["W"]) + np.asarray(params["readout"]["b"])


@pytest.mark.parametrize("name", cells.NAMES)
@pytest.mark.slow
def test_last_valid_step_readout(name):
  cell, params = _model(name)
  xs = jax.random.normal(jax.random.key(5), (4, 6, F))
  lengths = jnp.array([6, 1, 0, 4])
  out = models.apply(cell, params, xs, lengths, per_step=False)
  for b, L in enumerate(lengths.tolist()):
    if L == 0:
      np.testing.assert_allclose(out[b], params["readout"]["b"], rtol=0, atol=0)
    else:
      _, hs = loop(cell, params["cell"], xs[b, :L])
      np.testing.assert_allclose(out[b], _readout(params, hs[-1]), rtol=1e-5, atol=1e-6)
  per_step = models.apply(cell, params, xs, per_step=True)
  np.testing.assert_allclose(models.apply(cell, params, xs, per_step=False), per_step[:, -1],
                             rtol=1e-6, atol=1e-6)


def _closed_loop_by_hand(cell, params, xs, prefix_len, channel):
  """The literal definition: a Python loop that writes each prediction into the next input."""
  state = cell.initial_state(params["cell"], xs.shape[:-2])
  preds, prev = [], None
  for t in range(xs.shape[-2]):
    x = xs[:, t]
    if t >= prefix_len:
      x = x.at[:, channel].set(prev)
    state, h = cell.step(params["cell"], state, x)
    y = models.readout(params, h)
    preds.append(y)
    prev = y[:, 0]
  return jnp.stack(preds, axis=1)


@pytest.mark.parametrize("name", cells.NAMES)
def test_closed_loop_equals_feeding_predictions_back_by_hand(name):
  cell, params = _model(name)
  xs = jax.random.normal(jax.random.key(6), (3, 8, F))
  got = jax.jit(lambda p, x: models.closed_loop(cell, p, x, prefix_len=3, feedback_channel=1))(
      params, xs)
  np.testing.assert_allclose(got, _closed_loop_by_hand(cell, params, xs, 3, 1),
                             rtol=1e-5, atol=1e-6)
  teacher = models.apply(cell, params, xs, per_step=True)
  np.testing.assert_allclose(got[:, :3], teacher[:, :3], rtol=1e-6, atol=1e-6)
  assert not np.allclose(got[:, 3:], teacher[:, 3:])  # the feedback really changes the inputs


def test_scheduled_sampling_extremes_are_teacher_forcing_and_free_running():
  cell, params = _model("lstm")
  xs = jax.random.normal(jax.random.key(7), (3, 8, F))
  key = jax.random.key(8)
  teacher = models.apply(cell, params, xs, per_step=True)
  free = models.closed_loop(cell, params, xs, 2, 0)
  np.testing.assert_allclose(models.closed_loop(cell, params, xs, 2, 0, teacher_prob=1.0, key=key),
                             teacher, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(models.closed_loop(cell, params, xs, 2, 0, teacher_prob=0.0, key=key),
                             free, rtol=0, atol=0)


@pytest.mark.slow
def test_closed_loop_gradient_matches_float64_finite_differences():
  with jax.enable_x64(True):
    cell, params = _model("rwa")
    params = jax.tree.map(lambda v: v.astype(jnp.float64), params)
    xs = jax.random.normal(jax.random.key(9), (2, 7, F), jnp.float64)

    def loss(params):
      return jnp.sum(jnp.sin(models.closed_loop(cell, params, xs, 2, 0)))

    grads = jax.grad(loss)(params)
    assert_directional_derivatives(loss, (params,), (grads,), [jax.random.key(10)])


def test_closed_loop_rejects_a_prefix_outside_the_sequence():
  cell, params = _model()
  with pytest.raises(ValueError, match="prefix_len"):
    models.closed_loop(cell, params, jnp.zeros((1, 5, F)), prefix_len=6)


# --- attention readout -------------------------------------------------------------------------


def _attention_model(name="lstm", key=0, dtype=jnp.float32):
  cell = cells.get(name, hidden_size=H)
  params = models.init(cell, jax.random.key(key), F, O, readout="attention")
  params = random_params(params, jax.random.key(key + 1))
  return cell, jax.tree.map(lambda v: v.astype(dtype), params)


def _attention_by_hand(params, hs):
  """float64 NumPy, literally: y_t for every t of one sequence's valid steps hs [L, H]."""
  r = {k: np.asarray(v, np.float64) for k, v in params["readout"].items()}
  hs = np.asarray(hs, np.float64)
  ys = []
  for t in range(hs.shape[0]):
    q = hs[t] @ r["W_q"]
    scores = np.array([q @ (hs[i] @ r["W_k"]) for i in range(t + 1)]) / np.sqrt(hs.shape[1])
    alpha = np.exp(scores - scores.max())
    alpha /= alpha.sum()
    c = sum(alpha[i] * (hs[i] @ r["W_v"]) for i in range(t + 1))
    ys.append(np.concatenate([hs[t], c]) @ r["W"] + r["b"])
  return np.array(ys).reshape(-1, r["b"].shape[0])


def test_attention_init_has_exactly_the_documented_keys_and_shapes():
  cell = cells.get("lstm", hidden_size=5)
  params = models.init(cell, jax.random.key(0), 3, 2, readout="attention")
  assert set(params) == {"cell", "readout"}
  assert {k: v.shape for k, v in params["readout"].items()} == {
      "W_q": (5, 5), "W_k": (5, 5), "W_v": (5, 5), "W": (10, 2), "b": (2,)}
  assert all(v.dtype == jnp.float32 for v in params["readout"].values())
  np.testing.assert_array_equal(params["readout"]["b"], 0)
  linear = models.init(cell, jax.random.key(0), 3, 2)
  assert {k: v.shape for k, v in linear["readout"].items()} == {"W": (5, 2), "b": (2,)}
  with pytest.raises(ValueError, match="attention"):
    models.init(cell, jax.random.key(0), 3, 2, readout="conv")


@pytest.mark.parametrize("name", cells.NAMES)
@pytest.mark.slow
def test_attention_readout_matches_a_float64_loop(name):
  cell, params = _attention_model(name)
  T = 6
  xs = jax.random.normal(jax.random.key(5), (4, T, F))
  lengths = jnp.array([T, 1, 0, 4])
  per_step = models.apply(cell, params, xs, lengths, per_step=True)
  last = models.apply(cell, params, xs, lengths, per_step=False)
  b = np.asarray(params["readout"]["b"])
  for i, L in enumerate(lengths.tolist()):
    _, hs = loop(cell, params["cell"], xs[i, :L])
    want = _attention_by_hand(params, hs)
    np.testing.assert_allclose(per_step[i, :L], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(per_step[i, L:], np.broadcast_to(b, (T - L, O)))
    np.testing.assert_allclose(last[i], want[-1] if L else b, rtol=1e-5, atol=1e-5)
  # without lengths: every sequence is T long
  full = models.apply(cell, params, xs, per_step=True)
  for i in range(xs.shape[0]):
    want = _attention_by_hand(params, loop(cell, params["cell"], xs[i])[1])
    np.testing.assert_allclose(full[i], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(models.apply(cell, params, xs, per_step=False), full[:, -1],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_attention_is_causal():
  cell, params = _attention_model("rwa")
  xs = jax.random.normal(jax.random.key(6), (2, 9, F))
  changed = xs.at[:, 5:].set(jax.random.normal(jax.random.key(7), (2, 4, F)))
  a = models.apply(cell, params, xs)
  b = models.apply(cell, params, changed)
  np.testing.assert_array_equal(a[:, :5], b[:, :5])
  assert not np.allclose(a[:, 5:], b[:, 5:])  # the change does reach the later steps
  grads = jax.grad(lambda x: jnp.sum(models.apply(cell, params, x)[:, 4]))(xs)
  np.testing.assert_array_equal(grads[:, 5:], 0)


@pytest.mark.parametrize("per_step", [True, False])
def test_attention_padding_reaches_no_output_or_gradient(per_step):
  cell, params = _attention_model("lstm")
  xs = jax.random.normal(jax.random.key(8), (3, 7, F))
  lengths = jnp.array([7, 3, 0])
  pad = jnp.arange(7)[None, :, None] >= lengths[:, None, None]
  poisoned = jnp.where(pad, jnp.array([jnp.nan, jnp.inf])[None, None, :], xs)
  zeroed = jnp.where(pad, 0.0, xs)

  def loss(params, xs):
    return jnp.sum(jnp.sin(models.apply(cell, params, xs, lengths, per_step=per_step)))

  for fn in (jax.jit(lambda p, x: models.apply(cell, p, x, lengths, per_step=per_step)),
             jax.jit(jax.grad(loss)), jax.jit(jax.grad(loss, argnums=1))):
    got, want = fn(params, poisoned), fn(params, zeroed)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(got))
    jax.tree.map(np.testing.assert_array_equal, got, want)
  dxs = fn(params, poisoned)
  np.testing.assert_array_equal(jnp.where(pad, dxs, 0.0), 0)


@pytest.mark.parametrize("per_step", [True, False])
@pytest.mark.slow
def test_attention_gradient_matches_float64_finite_differences(per_step):
  with jax.enable_x64(True):
    cell, params = _attention_model("rwa", dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(9), (3, 6, F), jnp.float64)
    lengths = jnp.array([6, 2, 0])

    @jax.jit
    def loss(params):
      return jnp.sum(jnp.sin(models.apply(cell, params, xs, lengths, per_step=per_step)))

    grads = jax.jit(jax.grad(loss))(params)
    assert_directional_derivatives(loss, (params,), (grads,), [jax.random.key(10)])
    # the attention weights really take part (not only the [h, c] head)
    assert all(np.abs(grads["readout"][k]).sum() > 0 for k in ("W_q", "W_k", "W_v"))


def test_closed_loop_refuses_the_attention_readout():
  cell, params = _attention_model()
  with pytest.raises(ValueError, match="linear readout only"):
    models.closed_loop(cell, params, jnp.zeros((1, 5, F)), prefix_len=2)


# --- remat: the readout inside nested checkpointed chunks ----------------------------------------


@pytest.mark.parametrize("name,readout", [("lstm", "linear"), ("rwa", "linear"),
                                          ("gru", "attention")])
@pytest.mark.slow
def test_remat_streamed_path_equals_the_plain_path(name, readout, monkeypatch):
  # A fan-out of 3 nests two checkpoint levels over T = 23 (chunks 9 and 3), with a remainder
  # at both levels.
  monkeypatch.setattr(models, "MAX_FANOUT", 3)
  assert models._chunk_sizes(23) == [9, 3]
  cell = cells.get(name, hidden_size=H)
  params = random_params(models.init(cell, jax.random.key(0), F, O, readout=readout),
                         jax.random.key(1))
  T = 23
  xs = jax.random.normal(jax.random.key(2), (4, T, F))
  lengths = jnp.array([T, 11, 0, 19])
  pad = jnp.arange(T)[None, :, None] >= lengths[:, None, None]
  poisoned = jnp.where(pad, jnp.nan, xs)
  # per-step attention needs every key: it takes the plain path whatever remat says
  modes = (True, False) if readout == "linear" else (False,)

  @functools.partial(jax.jit, static_argnums=1)
  def outputs_and_grads(params, remat):
    got = {}
    for per_step in modes:
      for lens, x in ((None, xs), (lengths, poisoned)):
        def loss(params):
          ys = models.apply(cell, params, x, lens, per_step=per_step, remat=remat)
          return jnp.sum(jnp.sin(ys)), ys
        got[per_step, lens is None] = jax.grad(loss, has_aux=True)(params)[::-1]
    return got

  plain, streamed = outputs_and_grads(params, False), outputs_and_grads(params, True)
  for key in plain:
    (ys_plain, g_plain), (ys_streamed, g_streamed) = plain[key], streamed[key]
    np.testing.assert_allclose(ys_streamed, ys_plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_streamed), jax.tree.leaves(g_plain)):
      assert np.isfinite(a).all()
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * np.abs(b).max())


def test_remat_nesting_covers_every_step_once():
  """The chunk sizes nest (each divides the one above) and stay within the fan-out."""
  for T in (2, 37, 1000, 4096, 4097, 10**5, 10**6):
    sizes = models._chunk_sizes(T)
    k = sizes[-1]
    assert k <= models.MAX_FANOUT
    assert sizes == [k ** i for i in range(len(sizes), 0, -1)]
    assert k ** (len(sizes) + 1) >= T  # at most k chunks at the top level
  assert len(models._chunk_sizes(1000)) == 1 and len(models._chunk_sizes(10**5)) == 2


def _temp_mib(fn, *args):
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "rwa"])
def test_remat_train_step_memory_barely_grows_with_T(name):
  """XLA's compiled temporaries of a whole train step (forward, loss, backward, Adam) at a
  last-step task: T = 64000 within 4x of T = 1000 with remat (the plain path: ~T)."""
  import optax
  B, Hs = 8, 32
  cell = cells.get(name, hidden_size=Hs)
  params = models.init(cell, jax.random.key(0), F, O)
  tx = optax.adam(1e-3)

  def temp(T, remat, train=True):
    xs = jax.ShapeDtypeStruct((B, T, F), jnp.float32)
    ys = jax.ShapeDtypeStruct((B, O), jnp.float32)
    if not train:  # evaluation: forward only
      return _temp_mib(jax.jit(lambda p, xs: models.apply(cell, p, xs, per_step=False,
                                                          remat=remat)), params, xs)

    def step(state, xs, ys):
      params, opt = state
      grads = jax.grad(lambda p: jnp.mean(
          (models.apply(cell, p, xs, per_step=False, remat=remat) - ys) ** 2))(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt

    return _temp_mib(jax.jit(step, donate_argnums=0), (params, tx.init(params)), xs, ys)

  assert temp(64000, True) <= 4 * temp(1000, True)
  assert temp(64000, False) >= 20 * temp(1000, False)  # what remat saves
  hs_mib = B * 64000 * Hs * 4 / 2**20
  assert temp(64000, True, train=False) < hs_mib / 4  # evaluation builds no [B, T, H] either
