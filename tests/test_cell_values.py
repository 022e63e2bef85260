"""Cells as values (equal and hashable when built alike, one trace for two alike cells), and
`cells.LoopParts(..., update_takes_params=True)` through the hand-written backward pass."""

import jax
import jax.numpy as jnp
import pytest

import seqjax
from seqjax import cells
from helpers import assert_trees_close, random_params


def _peephole_lstm(H):
  """An LSTM with peepholes (Gers & Schmidhuber 2000): the input and forget gates read
  c_{t-1}·w_ci, w_cf, the output gate c_t·w_co — params read in `update`."""
  lstm = cells.lstm(H)

  def init(key, input_size):
    k, kp = jax.random.split(key)
    w = jax.random.normal(kp, (3, H))
    return lstm.init(k, input_size) | {"w_ci": w[0], "w_cf": w[1], "w_co": w[2]}

  def update(params, state, px, ph):
    i, f, g, o = jnp.split(px + ph, 4, axis=-1)
    c = (jax.nn.sigmoid(f + state.c * params["w_cf"]) * state.c
         + jax.nn.sigmoid(i + state.c * params["w_ci"]) * jnp.tanh(g))
    h = jax.nn.sigmoid(o + c * params["w_co"]) * jnp.tanh(c)
    return cells.LSTMState(h=h, c=c), h

  project_x = lambda params, x: x @ params["W_x"] + params["b"]  # noqa: E731
  project_h = lambda params, h: h @ params["W_h"]  # noqa: E731
  step, fast = cells.fused_step(cells.LoopParts(project_x, project_h, update,
                                                update_takes_params=True))
  return cells.Cell(init, lstm.initial_state, step, "peephole_lstm", H, fast)


def test_cells_built_alike_are_equal_and_hash_alike():
  alike = [
      *[(lambda n=n: cells.get(n, hidden_size=4)) for n in cells.NAMES],
      lambda: cells.get("gru", hidden_size=4, num_layers=3),
      lambda: cells.stack([cells.lstm(5), cells.rwa(4)]),
      lambda: cells.min_rwa(4, parallel=True),
      lambda: cells.lstm(4, dtype=jnp.bfloat16),
      lambda: _peephole_lstm(4),
      lambda: cells.autodiff_backward(cells.gru(4)),
  ]
  built = [make() for make in alike]
  for make, cell in zip(alike, built):
    again = make()
    assert cell == again and hash(cell) == hash(again) and not cell != again, cell.name
  for i, a in enumerate(built):  # every other cell of the list differs
    assert all(a != b for j, b in enumerate(built) if j != i), a.name
  lstm = cells.lstm(4)
  assert lstm != cells.lstm(5) and lstm != cells.lstm(4, dtype=jnp.bfloat16)
  assert lstm != cells.min_rwa(4) and cells.min_rwa(4) != cells.min_rwa(4, parallel=False)
  assert lstm != lstm._replace(step=lambda p, s, x: lstm.step(p, s, x))  # a replaced step
  assert lstm != lstm._replace(name="other") and lstm != tuple(lstm)


def test_two_alike_cells_as_a_static_argument_trace_once():
  traces = []

  def forward(cell, params, xs):
    traces.append(cell.name)
    return seqjax.scan(cell, params, xs)[1]

  forward = jax.jit(forward, static_argnums=0)
  xs = jnp.ones((2, 3, 2))
  params = cells.lstm(4).init(jax.random.key(0), 2)
  first = forward(cells.lstm(4), params, xs)
  second = forward(cells.lstm(4), params, xs)  # built again: the same cell, no new trace
  assert len(traces) == 1
  assert jnp.array_equal(first, second)
  forward(cells.gru(4), cells.gru(4).init(jax.random.key(0), 2), xs)
  assert len(traces) == 2


def test_update_that_reads_params_equals_autodiff_in_float64():
  """A peephole LSTM whose update reads w_ci, w_cf, w_co: the hand-written backward pass gives
  JAX's own gradients (params with the peepholes, inputs, initial state), lengths and resets
  included."""
  with jax.enable_x64(True):
    cell = _peephole_lstm(4)
    params = random_params(jax.tree.map(lambda v: v.astype(jnp.float64),
                                        cell.init(jax.random.key(0), 3)), jax.random.key(1))
    xs = jax.random.normal(jax.random.key(2), (3, 6, 3), jnp.float64)
    state0 = cell.initial_state(params, (3,))
    state0 = state0._replace(c=jax.random.normal(jax.random.key(4), state0.c.shape))
    kw = dict(lengths=jnp.array([6, 0, 4]), resets=jnp.arange(6)[None].repeat(3, 0) % 4 == 2)
    w = jax.random.normal(jax.random.key(3), (3, 6, 4), jnp.float64)

    def grads(c):
      def loss(p, x, s):
        state, hs = seqjax.scan(c, p, x, initial_state=s, **kw)
        return jnp.sum(hs * w) + jnp.sum(jnp.tanh(state.c))
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, state0)

    with jax.numpy_rank_promotion("allow"):  # the peepholes [H] broadcast over the batch
      fast, plain = grads(cell), grads(cells.autodiff_backward(cell))
    assert cells.autodiff_backward(cell).fast_loop is None
    assert float(jnp.abs(fast[1][0]["w_cf"]).max()) > 0
    assert_trees_close(fast, plain, rtol=1e-11, atol=1e-12)


def test_update_backward_is_refused_with_an_update_that_reads_params():
  parts = cells.LoopParts(lambda p, x: x, lambda p, h: h, lambda p, s, a, b: (s, s.h), True,
                          cells.UpdateBackward(None, None, None))
  with pytest.raises(ValueError, match="update_takes_params=True leave backward=None"):
    cells.fused_step(parts)
