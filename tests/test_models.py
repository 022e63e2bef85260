"""Readouts and the closed loop (stateful prediction) against literal per-step definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells, models
from helpers import loop, random_params

F, H, O = 2, 4, 1


def _model(name="rwa", key=0):
  cell = cells.get(name, hidden_size=H)
  params = random_params(models.init(cell, jax.random.key(key), F, O), jax.random.key(key + 1))
  return cell, params


def _readout(params, h):
  return np.asarray(h) @ np.asarray(params["readout"]["W"]) + np.asarray(params["readout"]["b"])


@pytest.mark.parametrize("name", cells.NAMES)
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


def test_closed_loop_gradient_matches_float64_finite_differences():
  with jax.enable_x64(True):
    cell, params = _model("rwa")
    params = jax.tree.map(lambda v: v.astype(jnp.float64), params)
    xs = jax.random.normal(jax.random.key(9), (2, 7, F), jnp.float64)

    def loss(params):
      return jnp.sum(jnp.sin(models.closed_loop(cell, params, xs, 2, 0)))

    grads = jax.grad(loss)(params)
    direction = random_params(params, jax.random.key(10), scale=1.0)
    eps = 1e-6
    fd = (loss(jax.tree.map(lambda p, d: p + eps * d, params, direction))
          - loss(jax.tree.map(lambda p, d: p - eps * d, params, direction))) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in
                   zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, fd, rtol=1e-7)


def test_closed_loop_rejects_a_prefix_outside_the_sequence():
  cell, params = _model()
  with pytest.raises(ValueError, match="prefix_len"):
    models.closed_loop(cell, params, jnp.zeros((1, 5, F)), prefix_len=6)
