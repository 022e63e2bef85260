"""`seqjax.scan` against the literal per-step loop; lengths, unroll, remat, streaming."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import _fused, cells
from helpers import assert_trees_close, loop, random_params, scan_in_pieces
import numpy_refs

F, H = 3, 4
CELLS = {
    "rnn": lambda: cells.rnn(H),
    "lstm": lambda: cells.lstm(H),
    "gru": lambda: cells.gru(H),
    "rwa": lambda: cells.rwa(H),
    "rda": lambda: cells.rda(H),
    "lstm+rwa": lambda: cells.stack([cells.lstm(5), cells.rwa(H)]),
}
# A cell written elsewhere has no fast loop: scan runs its step and differentiates with jax.grad.
WITHOUT_PARTS = {"rwa, no parts": lambda: cells.rwa(H)._replace(fast_loop=None)}


def _problem(name, B=3, T=9, key=0, input_size=F):
  cell = {**CELLS, **WITHOUT_PARTS}[name]()
  kp, kr, kx = jax.random.split(jax.random.key(key), 3)
  params = random_params(cell.init(kp, input_size), kr)
  xs = jax.random.normal(kx, (B, T, input_size))
  return cell, params, xs


@pytest.mark.parametrize("name", CELLS)
def test_scan_equals_python_loop_of_step(name):
  cell, params, xs = _problem(name)
  state, hs = seqjax.scan(cell, params, xs)
  ref_state, ref_hs = loop(cell, params, xs)
  assert hs.shape == (3, 9, H)
  assert_trees_close((state, hs), (ref_state, ref_hs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "rwa", "rda"])
def test_scan_matches_numpy_reference(name):
  cell, params, xs = _problem(name)
  _, hs = jax.jit(lambda p, x: seqjax.scan(cell, p, x))(params, xs)
  for b in range(3):
    np.testing.assert_allclose(hs[b], numpy_refs.REFERENCES[name](params, xs[b]),
                               rtol=2e-6, atol=2e-6)


def _loss_and_grads(cell, params, xs, **kw):
  w = jnp.cos(jnp.arange(xs.shape[-2] * H, dtype=jnp.float32)).reshape(xs.shape[-2], H)

  def loss(params, xs):
    state, hs = seqjax.scan(cell, params, xs, **kw)
    final_h = jax.tree.leaves(state)[0]
    return jnp.sum(hs * w[None]) + jnp.sum(jnp.sin(final_h))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, xs)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("T, with_lengths", [
    (10, True),    # 10: not a multiple of the remat chunk (4), padded with masked steps
    (16, False),   # whole chunks, the unmasked loop
])
@pytest.mark.slow
def test_unroll_and_remat_change_nothing(name, T, with_lengths):
  cell, params, xs = _problem(name, T=T)
  lengths = jnp.array([T, 0, T - 3]) if with_lengths else None
  ref = _loss_and_grads(cell, params, xs, lengths=lengths)
  for kw in [dict(unroll=4), dict(remat=True), dict(unroll=3, remat=True)]:
    got = _loss_and_grads(cell, params, xs, lengths=lengths, **kw)
    assert_trees_close(got, ref, rtol=1e-5, atol=1e-6)


def _literal_with_lengths(cell, params, xs, lengths, state0):
  """Per sequence: the Python loop of `cell.step` over exactly lengths[b] steps, outputs
  zero-padded to T (the contract's definition of lengths, with no masking code involved)."""
  states, hs = [], []
  for b, L in enumerate(lengths):
    s, h = loop(cell, params, xs[b, :L], jax.tree.map(lambda v: v[b], state0))
    states.append(s)
    hs.append(jnp.concatenate([h, jnp.zeros((xs.shape[1] - L, h.shape[-1]), h.dtype)]))
  return jax.tree.map(lambda *v: jnp.stack(v), *states), jnp.stack(hs)


@pytest.mark.parametrize("name", [*CELLS, *WITHOUT_PARTS])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.slow
def test_scan_gradients_equal_autodiff_of_the_literal_loop(name, with_lengths, remat):
  """scan differentiates the time loop by hand (seqjax._fused); in float64 its gradients with
  respect to params, inputs and the initial state equal jax.grad of the per-step loop."""
  _check_against_the_literal_loop(name, with_lengths, remat, F)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "rwa", "rda"])
@pytest.mark.slow
def test_wide_inputs_keep_their_projection_and_match_the_literal_loop(name):
  """Inputs wider than seqjax._fused.NARROW_INPUT take the other branch of the backward pass
  (x·W_x stored, its gradients after the loop)."""
  assert 40 > _fused.NARROW_INPUT
  _check_against_the_literal_loop(name, True, False, 40)


_QUICK_IN_LOOP = (("lstm", True, True, F), ("rda", True, False, F), ("gru", True, False, 40),
                  ("lstm+rwa", True, True, F))


@pytest.mark.parametrize("name, with_lengths, remat, input_size", [
    *_QUICK_IN_LOOP,
    *[pytest.param(*case, marks=pytest.mark.slow) for case in
      [(name, lengths, remat, F) for name in CELLS for lengths in (False, True)
       for remat in (False, True)] + [("rnn", True, True, 40), ("rwa", True, False, 40)]
      if case not in _QUICK_IN_LOOP]])
def test_the_in_loop_layout_matches_the_literal_loop(name, with_lengths, remat, input_size,
                                                     monkeypatch):
  """The backward layout that keeps only the state and accumulates the weight gradients in the
  loop (what `backward_layout` picks on CPU at large batches) gives the literal loop's
  values and gradients, float64."""
  layouts = []
  make = _fused.make_fused_scan

  def spy(*args, **kw):
    layouts.append(kw["weights_in_loop"])
    return make(*args, **kw)

  monkeypatch.setattr(_fused, "make_fused_scan", spy)
  with _fused.forced_layout("in_loop"):
    _check_against_the_literal_loop(name, with_lengths, remat, input_size)
  assert layouts and all(layouts)


@pytest.mark.parametrize("name, input_size", [("gru", 40), ("lstm", F)])
def test_past_the_memory_cap_no_per_step_projection_is_kept(name, input_size, monkeypatch):
  """Past AFTER_MAX_BUFFER (here lowered to the test's T·B·K - 1) the loop keeps neither h·W_h
  nor a wide input's x·W_x, and still gives the literal loop's values and gradients; at the cap
  a wide input's projection is stored again."""
  seen, make = [], _fused.make_fused_scan
  monkeypatch.setattr(_fused, "make_fused_scan", lambda *a, **kw: seen.append(
      (kw["store_input_projection"], kw["weights_in_loop"])) or make(*a, **kw))
  gates = {"gru": 3, "lstm": 4}[name]
  monkeypatch.setattr(_fused, "AFTER_MAX_BUFFER", 10 * 3 * gates * H - 1)  # T=10, B=3, K
  # (store_input_projection, weights_in_loop) of the T = 10 scan; the call before it is the
  # T = 4 prefix that makes state0, under the cap
  _check_against_the_literal_loop(name, True, False, input_size)
  assert len(seen) == 2 and seen[1] == (False, True)
  seen.clear()
  monkeypatch.setattr(_fused, "AFTER_MAX_BUFFER", 10 * 3 * gates * H)
  with _fused.freed_memory_kept():
    _check_against_the_literal_loop(name, True, False, input_size)
  assert len(seen) == 2 and seen[1] == (input_size > _fused.NARROW_INPUT, False)


def _program(text):
  """Compiled HLO text without what names the source: metadata and the stack-frame tables."""
  import re
  text = re.sub(r", metadata=\{[^}]*\}", "", text)
  tables = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
  return "\n".join(line for line in text.splitlines()[1:]
                   if line not in tables and not re.match(r"\d+ ", line))


@pytest.mark.parametrize("name", ["lstm", "gru", "rwa", "rda"])
def test_inference_is_the_autodiff_cells_program(name):
  """Undifferentiated, the hand-written pass is never traced: the default path's forward
  compiles to the very program of cells.autodiff_backward's step loop, so inference cannot be
  slower (or faster) than JAX's own, whatever a timing says."""
  cell, params, xs = _problem(name, B=3, T=5)

  def compiled(c):
    forward = jax.jit(lambda p, x: seqjax.scan(c, p, x, lengths=jnp.array([5, 2, 0])))
    return _program(forward.lower(params, xs).compile().as_text())
  fast = compiled(cell)
  assert "while" in fast and fast == compiled(cells.autodiff_backward(cell))


def test_backward_layout_rule():
  """In the loop only on the backends of IN_LOOP_ON: from the batch and the per-step buffer size
  measured on CPU with glibc's default allocator, and past the memory cap; told the freed memory
  is kept, only past the cap. The after-the-loop products everywhere else (GPU, TPU: unchanged)."""
  rule, T = _fused.backward_layout, 100
  B, K = _fused.IN_LOOP_FROM_BATCH, _fused.IN_LOOP_FROM_BUFFER // _fused.IN_LOOP_FROM_BATCH
  large = [("cpu", B, K, T), ("cpu", 128, 4 * 64, T), ("cpu", 100, 4 * 128, 1000)]
  small = [("cpu", B - 1, 4 * K, T), ("cpu", B, K - 1, T), ("cpu", 1, 4 * 128, 10000),
           ("cpu", 64, 4 * 64, T), ("cpu", 16, 4 * 256, T), ("cpu", 32, 4 * 128, T)]
  cap = _fused.AFTER_MAX_BUFFER  # T·B·K floats in one [T, B, K] buffer
  capped = [("cpu", 1, 4 * 128, cap // 512 + 1), ("cpu", 32, 4 * 128, cap // (32 * 512) + 1),
            ("cpu", 100, 4 * 250, 10000)]
  at_cap = [("cpu", 1, 4 * 128, cap // 512), ("cpu", 32, 4 * 128, cap // (32 * 512))]
  assert [rule(*a) for a in large + small + capped + at_cap] == (
      ["in_loop"] * len(large) + ["after"] * len(small) + ["in_loop"] * len(capped)
      + ["after"] * len(at_cap))
  with _fused.freed_memory_kept():
    assert [rule(*a) for a in large + small + capped + at_cap] == (
        ["after"] * len(large + small) + ["in_loop"] * len(capped) + ["after"] * len(at_cap))
    with _fused.freed_memory_kept():
      pass
    assert _fused.memory_kept()  # a nested context restores what it found
  assert not _fused.memory_kept()
  for backend in ("gpu", "tpu"):
    assert [rule(backend, *a[1:]) for a in large + capped] == ["after"] * len(large + capped)
  assert rule("cpu", 128, 4 * 64, T, in_loop_on=()) == "after"
  assert rule("gpu", 128, 4 * 64, T, in_loop_on=("gpu",)) == "in_loop"


@pytest.mark.parametrize("name, gates", [("lstm", 4), ("gru", 3), ("rnn", 1), ("rwa", 2),
                                         ("rda", 3), ("lstm+rwa", None)])
def test_the_rule_reads_each_cells_projection_width(name, gates, monkeypatch):
  """The layout is chosen from h·W_h's width K (4H for the lstm, 3H gru, 2H rwa, H rnn), the
  batch and the length; a stack chooses per layer."""
  seen = []
  rule = _fused.backward_layout
  monkeypatch.setattr(_fused, "backward_layout", lambda backend, batch, k, length: (
      seen.append((batch, k, length)) or rule(backend, batch, k, length)))
  cell, params, xs = _problem(name, B=3, T=4, input_size=F)
  jax.grad(lambda p: jnp.sum(seqjax.scan(cell, p, xs)[1]))(params)
  assert seen == ([(3, gates * cell.hidden_size, 4)] if gates else
                  [(3, 4 * cell.layers[0].hidden_size, 4), (3, 2 * cell.layers[1].hidden_size, 4)])


def _check_against_the_literal_loop(name, with_lengths, remat, input_size):
  T = 10
  with jax.enable_x64(True):
    cell, params, xs = _problem(name, B=3, T=T, input_size=input_size)
    params, xs = jax.tree.map(lambda v: v.astype(jnp.float64), (params, xs))
    # a reachable, non-trivial initial state: the state after a random prefix
    state0, _ = seqjax.scan(cell, params,
                            jax.random.normal(jax.random.key(5), (3, 4, input_size)))
    lengths = [T, 0, 6] if with_lengths else [T] * 3
    w = jax.random.normal(jax.random.key(6), (3, T, H), jnp.float64)

    def loss(run):
      def f(params, xs, state0):
        state, hs = run(params, xs, state0)
        return jnp.sum(hs * w) + sum(jnp.sum(jnp.tanh(v)) for v in jax.tree.leaves(state))
      return jax.value_and_grad(f, argnums=(0, 1, 2))(params, xs, state0)

    got = loss(lambda p, x, s: seqjax.scan(
        cell, p, x, lengths=jnp.array(lengths) if with_lengths else None, initial_state=s,
        remat=remat, unroll=2))
    ref = loss(lambda p, x, s: _literal_with_lengths(cell, p, x, lengths, s))
    assert_trees_close(got, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.slow
def test_forward_mode_and_hessian_vector_products(name):
  """jax.jvp needs cells.autodiff_backward (stacks included); Hessian-vector products go
  through the hand-written pass (the RWA's own rule too) and equal the literal loop's, float64."""
  with jax.enable_x64(True):
    cell, params, xs = _problem(name, T=6)
    params, xs = jax.tree.map(lambda v: v.astype(jnp.float64), (params, xs))
    loss = lambda run: (lambda p: jnp.sum(jnp.sin(run(p)[1])))
    fused = loss(lambda p: seqjax.scan(cell, p, xs))
    literal = loss(lambda p: loop(cell, p, xs))
    tangent = random_params(params, jax.random.key(3))
    _, jvp = jax.jvp(loss(lambda p: seqjax.scan(cells.autodiff_backward(cell), p, xs)),
                     (params,), (tangent,))
    grad = jax.grad(fused)(params)
    expected = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grad), jax.tree.leaves(tangent)))
    np.testing.assert_allclose(jvp, expected, rtol=1e-10)
    hvp = jax.jvp(jax.grad(fused), (params,), (tangent,))[1]
    hvp_ref = jax.jvp(jax.grad(literal), (params,), (tangent,))[1]
    assert_trees_close(hvp, hvp_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CELLS)
def test_forward_mode_raises_one_error_naming_autodiff_backward(name):
  cell, params, xs = _problem(name, T=4)
  f = lambda p: jnp.sum(seqjax.scan(cell, p, xs)[1])  # noqa: E731
  message = r"'.*' has a hand-written backward.*cells\.autodiff_backward\(cell\)"
  for forward in (lambda: jax.jvp(f, (params,), (params,)), lambda: jax.jacfwd(f)(params),
                  lambda: jax.jit(lambda p: jax.jvp(f, (p,), (p,)))(params),
                  lambda: jax.jvp(lambda x: jnp.sum(seqjax.scan(cell, params, x)[1]), (xs,), (xs,))):
    with pytest.raises(TypeError, match=message):
      forward()
  # Reverse mode under an outer jvp is not forward mode: d/dxs <grad_params, v>, a mixed
  # second derivative, runs the hand-written pass and equals the literal loop's.
  v = random_params(params, jax.random.key(4))
  def mixed(run):
    inner = lambda x: sum(jnp.vdot(g, w) for g, w in zip(  # noqa: E731
        jax.tree.leaves(jax.grad(lambda p: jnp.sum(jnp.sin(run(p, x)[1])))(params)),
        jax.tree.leaves(v)))
    return jax.jvp(inner, (xs,), (jnp.cos(xs),))[1]
  np.testing.assert_allclose(mixed(lambda p, x: seqjax.scan(cell, p, x)),
                             mixed(lambda p, x: loop(cell, p, x)), rtol=2e-5, atol=1e-5)


def _doubling(step):
  @functools.wraps(step)  # copies step's attributes and name: scan must still run this wrapper
  def doubled(params, state, x_t):
    state, h = step(params, state, x_t)
    return state, 2 * h
  return doubled


@pytest.mark.parametrize("name", ["lstm", "rwa", "lstm+rwa"])
@pytest.mark.parametrize("how", ["functools.wraps", "jax.vmap", "_replace", "layer"])
@pytest.mark.slow
def test_a_replaced_or_wrapped_step_is_what_scan_runs(name, how):
  """scan's fast loops belong to a cell's own step object: replace or wrap the step (or a
  stack layer's step) and scan runs yours, value and gradient equal to its literal loop."""
  cell, params, xs = _problem(name)
  lengths = jnp.array([9, 4, 0])
  if how == "functools.wraps":
    user = cell._replace(step=_doubling(cell.step))
  elif how == "jax.vmap":  # the step vmapped over the batch axis by the user
    user = cell._replace(step=jax.vmap(_doubling(cell.step), in_axes=(None, 0, 0)))
  elif how == "_replace":
    user = cell._replace(step=lambda p, s, x: _doubling(cell.step)(p, s, x))
  else:
    layers = cell.layers or (cell,)
    user = cells.stack([*layers[:-1], layers[-1]._replace(step=_doubling(layers[-1].step))])
    if not cell.layers:
      params = (params,)
  if how == "jax.vmap":  # a step for batch shape (3,) only: the batched loop is the reference
    lengths = None
    literal = lambda p: loop(user, p, xs)
  else:
    literal = lambda p: _literal_with_lengths(user, p, xs, lengths.tolist(),
                                              user.initial_state(p, (3,)))
  w = jax.random.normal(jax.random.key(7), (3, 9, H))
  loss = lambda s, hs: jnp.sum(hs * w) + jnp.sum(jax.tree.leaves(s)[0])
  got = jax.value_and_grad(lambda p: loss(*seqjax.scan(user, p, xs, lengths=lengths)))(params)
  ref = jax.value_and_grad(lambda p: loss(*literal(p)))(params)
  assert_trees_close(got, ref, rtol=1e-5, atol=1e-5)
  _, hs = seqjax.scan(cell, params if how != "layer" or cell.layers else params[0], xs,
                      lengths=lengths)
  np.testing.assert_allclose(seqjax.scan(user, params, xs, lengths=lengths)[1], 2 * hs,
                             rtol=1e-5, atol=1e-6)


def test_single_step_sequences_with_remat():
  cell, params, xs = _problem("rwa", T=1)
  ref = _loss_and_grads(cell, params, xs)
  assert_trees_close(_loss_and_grads(cell, params, xs, remat=True, unroll=2), ref)


@pytest.mark.parametrize("name", CELLS)
def test_unbatched_sequence_equals_its_batch_row(name):
  cell, params, xs = _problem(name)
  state, hs = seqjax.scan(cell, params, xs)
  state1, hs1 = seqjax.scan(cell, params, xs[1])
  assert hs1.shape == (9, H)
  assert_trees_close((state1, hs1), jax.tree.map(lambda v: v[1], (state, hs)))
  state2, hs2 = seqjax.scan(cell, params, xs[1], lengths=jnp.array(4))
  _, hs_trunc = seqjax.scan(cell, params, xs[1, :4])
  np.testing.assert_allclose(hs2[:4], hs_trunc, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(hs2[4:], 0)


@pytest.mark.parametrize("name", CELLS)
def test_lengths_equal_truncated_sequences(name):
  T = 9
  cell, params, xs = _problem(name, B=4, T=T)
  lengths = jnp.array([0, 3, T, 7])
  state, hs = seqjax.scan(cell, params, xs, lengths=lengths)
  for b, L in enumerate(lengths.tolist()):
    ref_state, ref_hs = loop(cell, params, xs[b, :L])
    assert_trees_close(jax.tree.map(lambda v: v[b], state), ref_state)
    np.testing.assert_allclose(hs[b, :L], ref_hs, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(hs[b, L:], 0)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("garbage", [np.nan, np.inf, 1e30])
@pytest.mark.slow
def test_padding_garbage_reaches_no_output_and_no_gradient(name, garbage):
  T = 8
  cell, params, xs = _problem(name, B=3, T=T)
  lengths = jnp.array([2, T, 5])
  pad = jnp.arange(T)[None, :, None] >= lengths[:, None, None]
  dirty = jnp.where(pad, jnp.asarray(garbage, xs.dtype), xs)
  clean = jnp.where(pad, 0.0, xs)
  for kw in [{}, dict(remat=True)]:
    (v_dirty, (gp_dirty, gx_dirty)) = _loss_and_grads(cell, params, dirty, lengths=lengths, **kw)
    (v_clean, (gp_clean, gx_clean)) = _loss_and_grads(cell, params, clean, lengths=lengths, **kw)
    assert np.isfinite(v_dirty)
    assert_trees_close((v_dirty, gp_dirty), (v_clean, gp_clean), rtol=0, atol=0)
    assert np.isfinite(gx_dirty).all()
    np.testing.assert_array_equal(jnp.where(pad, gx_dirty, 0), 0)
    np.testing.assert_array_equal(gx_dirty, gx_clean)


@pytest.mark.slow
def test_several_batch_dims_with_lengths():
  cell, params, xs = _problem("rwa", B=6)
  lengths = jnp.array([0, 1, 9, 4, 5, 8])
  state, hs = seqjax.scan(cell, params, xs, lengths=lengths)
  state2, hs2 = seqjax.scan(cell, params, xs.reshape(2, 3, 9, F), lengths=lengths.reshape(2, 3))
  assert_trees_close((state2, hs2), jax.tree.map(lambda v: v.reshape(2, 3, *v.shape[1:]),
                                                 (state, hs)))


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.slow
def test_streaming_in_pieces_equals_one_scan(name):
  T = 11
  cell, params, xs = _problem(name, B=3, T=T)
  lengths = jnp.array([11, 4, 7])
  whole = seqjax.scan(cell, params, xs, lengths=lengths)
  for cuts in [(5,), (1, 4, 10), (0, 11)]:
    assert_trees_close(scan_in_pieces(cell, params, xs, lengths, cuts), whole)


@pytest.mark.slow
def test_scan_under_vmap_equals_batched():
  cell, params, xs = _problem("lstm+rwa")
  lengths = jnp.array([9, 2, 6])
  _, hs = seqjax.scan(cell, params, xs, lengths=lengths)
  _, hs_v = jax.vmap(lambda x, L: seqjax.scan(cell, params, x, lengths=L))(xs, lengths)
  np.testing.assert_allclose(hs_v, hs, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_long_rwa_sequence_has_finite_accurate_values_and_gradients():
  """10^4 steps: float32 running sums stay within 1e-4 of float64's, gradients are finite."""
  T = 10_000
  cell, params, xs = _problem("rwa", B=2, T=T, key=1)

  def loss(params, xs):
    _, hs = seqjax.scan(cell, params, xs, remat=True)
    return jnp.mean(hs[:, -100:] ** 2), hs

  (value, hs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, xs)
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["W_u"]).max()) > 0
  with jax.enable_x64(True):
    p64, x64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), (params, xs))
    _, hs64 = jax.jit(lambda p, x: seqjax.scan(cell, p, x))(p64, x64)
  np.testing.assert_allclose(hs, hs64, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scale", [1e3, 1e4, 1e30])
@pytest.mark.slow
def test_rwa_gradients_through_scan_stay_exact_when_attention_saturates(scale):
  """|a| from 10^3 to 10^30: seqjax.scan's backward for the RWA (its own rule, carrying
  dd + dn·q) gives float32 gradients equal to float64's, W_a's ~0 one included, where autodiff
  of n/d leaves eps-sized noise (1e-7 absolute in W_a, 3e-4 in W_u at 1e4) and NaN at 1e30."""
  cell, params, xs = _problem("rwa", B=2, T=7, key=8)
  params = dict(params, W_ax=params["W_ax"] * scale, W_ah=params["W_ah"] * scale)
  loss = lambda p, xs: jnp.sum(seqjax.scan(cell, p, xs)[1] ** 2)
  g32 = jax.grad(loss)(params, xs)
  with jax.enable_x64(True):  # the oracle: autodiff of the per-step loop in float64
    p64, x64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), (params, xs))
    g64 = jax.grad(lambda p: jnp.sum(loop(cell, p, x64)[1] ** 2))(p64)
  for k in g64:
    if scale > 1e4:  # float64 autodiff itself overflows here: no oracle, only the sizes
      assert np.isfinite(g32[k]).all()
      continue
    tol = 1e-6 * max(float(np.abs(g64[k]).max()), 1.0) if k not in ("W_ax", "W_ah") else 1e-12
    np.testing.assert_allclose(g32[k], g64[k], rtol=0, atol=tol, err_msg=k)
  if scale > 1e4:
    g_ref = jax.grad(loss)(dict(params, W_ax=params["W_ax"] * 1e-26, W_ah=params["W_ah"] * 1e-26),
                           xs)  # the same cell at scale 1e4: the gradient must not move
    np.testing.assert_allclose(g32["W_u"], g_ref["W_u"], rtol=1e-5, atol=1e-6)


def test_hundred_thousand_steps_stay_finite():
  cell, params, xs = _problem("rwa", B=1, T=100_000, key=2)
  params = dict(params, W_ax=params["W_ax"] * 50, W_ah=params["W_ah"] * 50)
  state, hs = jax.jit(lambda p, x: seqjax.scan(cell, p, x))(params, xs)
  assert np.isfinite(hs).all() and all(np.isfinite(v).all() for v in state)
  assert float(state.d.min()) >= 1.0


@pytest.mark.slow
def test_remat_memory_grows_far_slower_than_T():
  cell = cells.lstm(32)
  params = cell.init(jax.random.key(0), F)

  def temp_bytes(T, remat):
    xs = jnp.zeros((8, T, F))
    grad = jax.jit(jax.grad(lambda p: jnp.sum(seqjax.scan(cell, p, xs, remat=remat)[0].h)))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

  plain = temp_bytes(4096, False)
  chunked = temp_bytes(4096, True)
  assert chunked < plain / 8, (chunked, plain)
  assert temp_bytes(16384, True) < 3 * chunked  # 4x T, ~2x memory (sqrt T)


@pytest.mark.parametrize("kwargs, message", [
    (dict(xs=jnp.zeros((5,))), "xs must be"),
    (dict(lengths=jnp.array([1, 2])), "batch shape"),
    (dict(lengths=jnp.array([1.0, 2.0, 3.0])), "integers"),
    (dict(lengths=jnp.array([1, 2, 10])), r"\[0, T=9\]"),
    (dict(lengths=jnp.array([-1, 2, 3])), r"\[0, T=9\]"),
    (dict(unroll=0), "unroll"),
])
def test_bad_arguments_are_named(kwargs, message):
  cell, params, xs = _problem("rwa")
  kwargs = dict(dict(xs=xs), **kwargs)
  with pytest.raises(ValueError, match=message):
    seqjax.scan(cell, params, **kwargs)
