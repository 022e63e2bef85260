"""The README's library examples run as printed (each block is executed from README.md itself,
so the README and the tests cannot drift apart), and compute what they claim."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import cells
from helpers import assert_trees_close, loop, random_params

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_block(marker):
  """The one ```python block of the README that contains `marker`."""
  blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if marker in b]
  assert len(blocks) == 1, f"{len(blocks)} README blocks contain {marker!r}"
  return blocks[0]


def run_block(marker, pasted_alone=False, **names):
  """Runs the block in the names the README's earlier blocks define (jax, jnp, seqjax, cells),
  or with `pasted_alone` in no names at all: a block that claims to run as pasted."""
  namespace = dict(names) if pasted_alone else \
      {"jax": jax, "jnp": jnp, "seqjax": seqjax, "cells": cells, **names}
  # User code: the test suite's rank-promotion guard (tests/conftest.py) is not the user's.
  with jax.numpy_rank_promotion("allow"):
    exec(compile(readme_block(marker), f"README.md block {marker!r}", "exec"), namespace)
  return namespace


def _example_ln_lstm():
  """ln_lstm of docs/examples/mypkg/cells.py (the module the README shows in full)."""
  path = README.parent / "docs" / "examples" / "mypkg" / "cells.py"
  namespace = {}
  exec(compile(path.read_text(), str(path), "exec"), namespace)
  return namespace["ln_lstm"]


def test_ln_lstm_example_runs_and_its_fast_loop_is_its_step():
  ln_lstm = _example_ln_lstm()
  with jax.numpy_rank_promotion("allow"):  # user code: the gains broadcast implicitly
    run_block("cell = ln_lstm(8)", ln_lstm=ln_lstm)   # the README's own gradient check
  cell = ln_lstm(4)
  assert {"LoopParts", "UpdateBackward", "fused_step"} <= set(cells.__all__)
  assert cell.fast_loop is not None and cells.autodiff_backward(cell).fast_loop is None
  with jax.enable_x64(True), jax.numpy_rank_promotion("allow"):
    params = jax.tree.map(lambda v: v.astype(jnp.float64),
                          random_params(cell.init(jax.random.key(0), 3), jax.random.key(1)))
    xs = jax.random.normal(jax.random.key(2), (2, 6, 3), jnp.float64)
    lengths = jnp.array([6, 3])

    def loss(run):
      return jax.value_and_grad(lambda p: jnp.sum(jnp.sin(run(p)[1])))(params)

    # The literal per-step loop (Python) against the hand-written time loop, float64.
    got = loss(lambda p: seqjax.scan(cell, p, xs))
    want = loss(lambda p: loop(cell, p, xs))
    assert_trees_close(got, want, rtol=1e-11, atol=1e-12)
    short = seqjax.scan(cell, params, xs, lengths=lengths)[1]
    np.testing.assert_allclose(short[1, :3], loop(cell, params, xs[1:, :3])[1][0], rtol=1e-12)
    np.testing.assert_array_equal(short[1, 3:], 0)


def test_equinox_example_trains():
  pytest.importorskip("equinox")
  ns = run_block("class Regressor(eqx.Module)", pasted_alone=True)  # its imports its own
  model, opt_state, train_step = ns["model"], ns["opt_state"], ns["train_step"]
  xs = jax.random.normal(jax.random.key(3), (4, 8, 2))
  ys = jnp.array([0.5, -0.5, 1.0, 0.0])
  # The model is seqjax.scan and a readout of the last step (a non-zero readout, to see it).
  model = model.__class__(ns["cell"], model.params, random_params(model.W, jax.random.key(4)))
  _, hs = seqjax.scan(ns["cell"], model.params, xs)
  np.testing.assert_allclose(model(xs), (hs[:, -1] @ model.W)[:, 0], rtol=1e-6)
  losses = []
  for _ in range(5):
    model, opt_state, loss = train_step(model, opt_state, xs, ys)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
