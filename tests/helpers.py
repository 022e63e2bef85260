"""Small test utilities shared by the test modules."""

import jax
import jax.numpy as jnp
import numpy as np

import seqjax


def random_params(params, key, scale=0.5):
  """Replaces every leaf (biases included) by N(0, scale^2) values of the same shape and dtype,
  so no test passes thanks to a zero bias or a special initialisation."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def loop(cell, params, xs, state=None):
  """The literal definition: `cell.step` called once per time step in a Python loop.
  xs: [*batch, T, F] -> (state, hs [*batch, T, H])."""
  if state is None:
    state = cell.initial_state(params, xs.shape[:-2])
  hs = []
  for t in range(xs.shape[-2]):
    state, h = cell.step(params, state, xs[..., t, :])
    hs.append(h)
  if not hs:
    return state, jnp.zeros((*xs.shape[:-2], 0, cell.hidden_size), xs.dtype)
  return state, jnp.stack(hs, axis=-2)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb, (ta, tb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def scan_in_pieces(cell, params, xs, lengths, cuts):
  """Streaming: scans xs [B, T, F] piece by piece (split at `cuts`), each piece starting from
  the previous piece's final state. Returns (final_state, hs) to compare with one whole scan."""
  edges = (0, *cuts, xs.shape[-2])
  state, pieces = None, []
  for lo, hi in zip(edges[:-1], edges[1:]):
    state, hs = seqjax.scan(cell, params, xs[:, lo:hi], lengths=jnp.clip(lengths - lo, 0, hi - lo),
                            initial_state=state)
    pieces.append(hs)
  return state, jnp.concatenate(pieces, axis=1)


def assert_directional_derivatives(loss, args, grads, keys, rtol=1e-7, atol=0.0, eps=1e-6):
  """Central finite differences of `loss(*args)` along random directions (one per key) against
  the analytic <grads, direction> (float64 callers)."""
  for key in keys:
    direction = random_params(args, key, scale=1.0)
    plus = jax.tree.map(lambda p, d: p + eps * d, args, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, args, direction)
    fd = (loss(*plus) - loss(*minus)) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in
                   zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, fd, rtol=rtol, atol=atol)


def assert_long_run_finite_and_close_to_float64(cell, params, xs, atol):
  """value_and_grad of a loss over seqjax.scan(cell, params, xs): value, outputs and gradients
  finite, some gradient nonzero, d ≥ 1 where the state has one (nothing underflowed to 0/0),
  and the outputs within `atol` of the same scan in float64."""
  def loss(p, x):
    state, hs = seqjax.scan(cell, p, x)
    return jnp.mean(hs[:, -100:] ** 2) + jnp.sum(state.h), (state, hs)

  (value, (state, hs)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      params, xs)
  assert np.isfinite(value) and np.isfinite(hs).all()
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads[0]["W_u"]).max()) > 0
  assert float(state.d.min()) >= 1.0
  with jax.enable_x64(True):
    p64, x64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), (params, xs))
    _, hs64 = jax.jit(lambda p, x: seqjax.scan(cell, p, x))(p64, x64)
  np.testing.assert_allclose(hs, hs64, rtol=0, atol=atol)
