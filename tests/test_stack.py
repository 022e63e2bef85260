"""Stacked cells against composing the layers' steps by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import cells
from helpers import assert_trees_close, loop, random_params

F = 3


@pytest.mark.slow
def test_stack_equals_composing_layer_steps_by_hand():
  layers = [cells.lstm(5), cells.rwa(4), cells.gru(6)]
  cell = cells.stack(layers)
  params = random_params(cell.init(jax.random.key(0), F), jax.random.key(1))
  assert [sorted(p) for p in params] == [sorted(layers[0].init(jax.random.key(0), F)),
                                         sorted(layers[1].init(jax.random.key(0), 5)),
                                         sorted(layers[2].init(jax.random.key(0), 4))]
  assert params[1]["W_u"].shape == (5, 4) and params[2]["W_x"].shape == (4, 18)
  assert cell.name == "lstm+rwa+gru" and cell.hidden_size == 6
  xs = jax.random.normal(jax.random.key(2), (2, 7, F))

  def by_hand(params, xs):
    hs = xs
    for layer, p in zip(layers, params):
      _, hs = loop(layer, p, hs)
    return hs

  def stacked(params, xs):
    return seqjax.scan(cell, params, xs)[1]

  assert_trees_close(stacked(params, xs), by_hand(params, xs), rtol=1e-5, atol=1e-6)
  w = jax.random.normal(jax.random.key(3), (2, 7, 6))
  g_stack = jax.grad(lambda p: jnp.sum(stacked(p, xs) * w))(params)
  g_hand = jax.grad(lambda p: jnp.sum(by_hand(p, xs) * w))(params)
  assert_trees_close(g_stack, g_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", cells.NAMES)
def test_stack_of_one_is_the_cell(name):
  cell = cells.get(name, hidden_size=4)
  one = cells.stack([cell])
  p = random_params(cell.init(jax.random.key(0), F), jax.random.key(1))
  xs = jax.random.normal(jax.random.key(2), (2, 6, F))
  lengths = jnp.array([6, 3])
  s1, hs1 = seqjax.scan(one, (p,), xs, lengths=lengths)
  s, hs = seqjax.scan(cell, p, xs, lengths=lengths)
  np.testing.assert_array_equal(hs1, hs)
  assert_trees_close(s1, (s,), rtol=0, atol=0)


def test_get_with_num_layers_stacks_that_cell():
  cell = cells.get("lstm", hidden_size=8, num_layers=3)
  params = cell.init(jax.random.key(0), F)
  assert cell.name == "lstm+lstm+lstm" and len(params) == 3
  assert params[0]["W_x"].shape == (F, 32) and params[1]["W_x"].shape == (8, 32)
  state = cell.initial_state(params, (2,))
  assert len(state) == 3 and all(isinstance(s, cells.LSTMState) for s in state)


def test_stack_rejects_non_cells():
  with pytest.raises(ValueError, match="stack"):
    cells.stack([])
  with pytest.raises(ValueError, match="stack"):
    cells.stack([cells.lstm(4), "rwa"])
