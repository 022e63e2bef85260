"""Small test utilities shared by the test modules."""

import jax
import jax.numpy as jnp
import numpy as np


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
