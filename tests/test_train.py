"""The jitted train step and the evaluation, on small problems."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells, models, tasks, train


def _cfg(model="rwa", task="adding", batch_size=16, **task_opts):
  task = tasks.get(task, **task_opts)
  return train.Config(cell=cells.get(model, hidden_size=8), task=task,
                      optimizer=train.make_optimizer(1e-2), batch_size=batch_size)


@pytest.mark.parametrize("model", cells.NAMES)
@pytest.mark.slow
def test_one_train_step_changes_every_parameter(model):
  cfg = _cfg(model, seq_len=10)
  state = train.init_state(cfg, jax.random.key(0))
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = train.make_train_step(cfg, seed=0)(state)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  for path, old in jax.tree_util.tree_leaves_with_path(before):
    new = np.asarray(_get(state.params, path))
    assert not np.array_equal(old, new), f"{jax.tree_util.keystr(path)} did not change"


def _get(tree, path):
  for key in path:
    tree = tree[key.key if hasattr(key, "key") else key.idx]
  return tree


@pytest.mark.slow
def test_training_lowers_the_loss():
  cfg = _cfg("lstm", "binary_addition", batch_size=32, seq_len=6)
  state = train.init_state(cfg, jax.random.key(1))
  step = train.make_train_step(cfg, seed=1)
  losses = []
  for _ in range(150):
    state, metrics = step(state)
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


def test_data_stream_is_indexed_by_step():
  cfg = _cfg(seq_len=10)
  a = cfg.task.sample(jax.random.fold_in(train.data_key(3), 5), 16)
  b = cfg.task.sample(jax.random.fold_in(train.data_key(3), 5), 16)
  c = cfg.task.sample(jax.random.fold_in(train.data_key(3), 6), 16)
  np.testing.assert_array_equal(a.xs, b.xs)
  assert not np.array_equal(a.xs, c.xs)


@pytest.mark.parametrize("task,opts", [("adding", dict(seq_len=12)),
                                       ("binary_addition", dict(seq_len=5)),
                                       ("seq_length", dict(seq_len=12)),
                                       ("trajectory", dict(seq_len=10))])
@pytest.mark.slow
def test_evaluate_in_chunks_equals_the_mean_over_all_examples(task, opts):
  cfg = _cfg("gru", task, batch_size=16, **opts)
  params = train.init_state(cfg, jax.random.key(2)).params
  held_out = cfg.task.held_out(jax.random.key(4), 37)  # 37: two full chunks and a padded one
  got = train.make_evaluate(cfg)(params, held_out)
  direct = train.batch_losses(cfg, params, held_out)
  for k, v in direct.items():
    np.testing.assert_allclose(got[k], np.mean(v), rtol=1e-5, atol=1e-7)
  if cfg.task.classification:
    np.testing.assert_allclose(got["perplexity"], np.exp(np.mean(direct["loss"])), rtol=1e-5)
  else:
    assert "perplexity" not in got
  if task == "trajectory":
    assert got["free_run_mse"] > 0 and "free_run_mse" not in cfg.task.losses(
        jnp.zeros((1, 10, 1)), cfg.task.sample(jax.random.key(0), 1))


@pytest.mark.slow
def test_free_running_training_differentiates_through_the_fed_back_predictions():
  base = _cfg("lstm", "trajectory", batch_size=4, seq_len=8)
  free = base._replace(feedback="free")
  state = train.init_state(base, jax.random.key(0))
  step_teacher = train.make_train_step(base, seed=0)
  step_free = train.make_train_step(free, seed=0)
  s_teacher, m_teacher = step_teacher(jax.tree.map(jnp.copy, state))
  s_free, m_free = step_free(jax.tree.map(jnp.copy, state))
  assert float(m_free["loss"]) != float(m_teacher["loss"])
  # the free step's update is Adam's first step on the closed-loop gradient: sign(g) * lr
  batch_key = jax.random.fold_in(train.data_key(0), 0)
  batch = free.task.sample(batch_key, 4)
  g = jax.grad(lambda p: jnp.mean(free.task.losses(models.closed_loop(
      free.cell, p, batch.xs, free.prefix_len, 0), batch)["loss"]))(state.params)
  moved = jax.tree.map(lambda a, b: np.asarray(a - b), s_free.params, state.params)
  for d, gl in zip(jax.tree.leaves(moved), jax.tree.leaves(g)):
    big = np.abs(np.asarray(gl)) > 1e-6
    np.testing.assert_array_equal(np.sign(d[big]), -np.sign(np.asarray(gl)[big]))


def test_scheduled_teacher_probability_falls_linearly():
  cfg = _cfg("lstm", "decay", seq_len=6)._replace(feedback="scheduled",
                                                  teacher_forcing_decay_steps=10)
  assert [float(train.teacher_forcing(cfg, s)) for s in (0, 5, 10, 20)] == [1.0, 0.5, 0.0, 0.0]
