"""The training recipe: --optimizer, --weight_decay, --momentum, --lr_schedule, --warmup_steps,
--decay_steps; against optax itself, hand-written schedules, and the optimizer runs were made
with before the recipe existed."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
from absl.testing import flagsaver
from flax import serialization

from launch import main as launch_main
from seqjax import cells, experiment, tasks, train
from seqjax.settings import Settings, train_config

FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS(["launch.main"])

TINY = Settings(model="lstm", task="adding", seq_len=6, hidden_size=4, batch_size=8, num_steps=4,
                eval_every=2, eval_size=16)
TIMING = ("examples_per_sec", "wall_time")


def _old_make_optimizer(learning_rate, clip_norm=None):
  """The optimizer of every run made before the recipe existed, frozen here as the oracle."""
  def adam(learning_rate):
    adam = optax.adam(learning_rate)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm else adam

  return optax.inject_hyperparams(adam)(learning_rate=learning_rate)


def _run(s, **changes):
  return experiment.run(dataclasses.replace(s, **changes), log=lambda line: None)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _config(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def _params(workdir):
  with open(os.path.join(workdir, "checkpoint.msgpack"), "rb") as f:
    return serialization.msgpack_restore(f.read())["params"]


def _steps(optimizer, n=3, clip_norm=None):
  cfg = train.Config(cell=cells.get("lstm", hidden_size=4), task=tasks.get("adding", seq_len=6),
                     optimizer=optimizer, batch_size=8)
  state = train.init_state(cfg, jax.random.key(0))
  step = train.make_train_step(cfg, seed=0)
  for _ in range(n):
    state, _ = step(state)
  return serialization.to_bytes(jax.device_get(state))


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_the_default_recipe_is_bit_for_bit_the_optimizer_of_earlier_runs(clip_norm):
  old = _steps(_old_make_optimizer(3e-3, clip_norm), clip_norm=clip_norm)
  assert _steps(train.make_optimizer(3e-3, clip_norm)) == old
  assert _steps(train.make_optimizer(3e-3, clip_norm, optimizer="adam",
                                     lr_schedule="constant")) == old
  # and as the settings build it, default and explicit alike
  for s in (TINY, dataclasses.replace(TINY, optimizer="adam", lr_schedule="constant")):
    s = dataclasses.replace(s, learning_rate=3e-3, clip_norm=clip_norm or 0.0).resolved()
    assert _steps(train_config(s, tasks.get("adding", seq_len=6)).optimizer) == old


def _grads(key):
  k1, k2 = jax.random.split(key)
  return {"w": jax.random.normal(k1, (3, 2)), "b": jax.random.normal(k2, (2,))}


@pytest.mark.parametrize("name,opts,oracle", [
    ("adamw", dict(weight_decay=0.1), lambda lr: optax.adamw(lr, weight_decay=0.1)),
    ("sgd", dict(momentum=0.9), lambda lr: optax.sgd(lr, momentum=0.9)),
    ("sgd", {}, lambda lr: optax.sgd(lr)),
    ("rmsprop", dict(momentum=0.5), lambda lr: optax.rmsprop(lr, momentum=0.5)),
    ("lion", dict(weight_decay=0.01), lambda lr: optax.lion(lr, weight_decay=0.01)),
])
def test_each_optimizer_steps_as_optax_does(name, opts, oracle):
  params = _grads(jax.random.key(5))
  ours, theirs = train.make_optimizer(0.01, optimizer=name, **opts), oracle(0.01)
  a, b = ours.init(params), theirs.init(params)
  for i in range(3):
    grads = _grads(jax.random.key(i))
    ua, a = ours.update(grads, a, params)
    ub, b = theirs.update(grads, b, params)
    for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)


def _schedule_oracle(name, warmup, decay, k):
  """The schedules written out (float64): a multiplier of the peak rate."""
  if name == "cosine":
    return 0.5 * (1 + math.cos(math.pi * min(k, decay) / decay))
  if name == "linear":
    return 1 - min(k, decay) / decay
  if k < warmup:
    return k / warmup
  return 0.5 * (1 + math.cos(math.pi * min(k - warmup, decay - warmup) / (decay - warmup)))


@pytest.mark.parametrize("name", ["cosine", "linear", "warmup_cosine"])
def test_a_schedule_scales_each_runs_own_rate(name):
  """sgd's update is -rate * schedule(k) * grad: each step's against the written-out schedule,
  for two peak rates in one optimizer state (as a group's runs have them)."""
  warmup, decay = 3, 8
  multiplier = train.lr_multiplier(name, warmup, decay)
  opt = train.make_optimizer(1.0, optimizer="sgd", lr_schedule=name, warmup_steps=warmup,
                             decay_steps=decay)
  params = _grads(jax.random.key(0))
  for rate in (0.1, 0.03):
    state = train.set_learning_rate(train.TrainState(0, params, opt.init(params)), rate).opt_state
    for k in range(decay + 3):  # past the horizon it stays at the end value, 0
      want = _schedule_oracle(name, warmup, decay, k)
      np.testing.assert_allclose(float(multiplier(k)), want, atol=1e-6)
      grads = _grads(jax.random.key(k))
      updates, state = opt.update(grads, state, params)
      for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_allclose(u, -rate * want * np.asarray(g), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name,opts", [("adamw", dict(weight_decay=0.01)),
                                       ("sgd", dict(momentum=0.9)), ("rmsprop", {}),
                                       ("lion", {})])
def test_every_optimizer_trains_and_is_recorded(name, opts, tmp_path):
  rows = _run(TINY, optimizer=name, learning_rate=0.01, workdir=str(tmp_path),
              **opts)[str(tmp_path)]
  assert all(math.isfinite(r["eval_loss"]) for r in rows)
  assert all(math.isfinite(r["train_loss"]) for r in rows[1:])  # rows[0]: step 0, untrained
  assert rows[0]["eval_loss"] != rows[-1]["eval_loss"]
  config = _config(tmp_path)
  assert config["optimizer"] == name and config["lr_schedule"] == "constant"
  assert ("weight_decay" in config) == (name in ("adamw", "lion"))
  assert ("momentum" in config) == (name in ("sgd", "rmsprop"))
  assert "warmup_steps" not in config and "decay_steps" not in config
  for key, value in opts.items():
    assert config[key] == value


@pytest.mark.slow
def test_a_resumed_warmup_cosine_run_ends_where_an_uninterrupted_one_does(tmp_path):
  s = dataclasses.replace(TINY, lr_schedule="warmup_cosine", warmup_steps=2, decay_steps=6,
                          eval_every=2, learning_rate=0.05)
  _run(s, num_steps=6, workdir=str(tmp_path / "whole"))
  _run(s, num_steps=3, workdir=str(tmp_path / "split"))
  _run(s, num_steps=6, decay_steps=None, workdir=str(tmp_path / "split"))  # from the record
  whole, split = _rows(tmp_path / "whole"), _rows(tmp_path / "split")
  assert [r["step"] for r in split] == [0, 2, 3, 4, 6]
  split = [r for r in split if r["step"] != 3]
  for w, p in zip(whole, split):
    # train_loss is the mean over the steps since the last row: at step 4 the split run's is
    # over step 4 alone
    skip = TIMING + (("train_loss",) if w["step"] == 4 else ())
    assert {k: v for k, v in w.items() if k not in skip} == \
        {k: v for k, v in p.items() if k not in skip}
  assert (tmp_path / "whole" / "checkpoint.msgpack").read_bytes() == \
      (tmp_path / "split" / "checkpoint.msgpack").read_bytes()
  config = _config(tmp_path / "split")
  assert config["warmup_steps"] == 2 and config["decay_steps"] == 6


@pytest.mark.slow
def test_the_horizon_is_recorded_at_the_first_launch_and_kept(tmp_path):
  s = dataclasses.replace(TINY, lr_schedule="cosine", learning_rate=0.05)
  _run(s, num_steps=4, workdir=str(tmp_path))
  assert _config(tmp_path)["decay_steps"] == 4 and "warmup_steps" not in _config(tmp_path)
  at_horizon = _params(tmp_path)
  _run(s, num_steps=8, workdir=str(tmp_path))
  assert _config(tmp_path)["decay_steps"] == 4 and _config(tmp_path)["num_steps"] == 8
  # past the horizon the rate is the schedule's end, 0: Adam moves nothing
  for a, b in zip(jax.tree.leaves(at_horizon), jax.tree.leaves(_params(tmp_path))):
    np.testing.assert_array_equal(a, b)
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == [0, 2, 4, 6, 8]
  assert rows[2]["eval_loss"] == rows[3]["eval_loss"] == rows[4]["eval_loss"]
  assert rows[1]["eval_loss"] != rows[2]["eval_loss"]
  with pytest.raises(experiment.RunError) as e:  # another horizon is another experiment
    _run(s, num_steps=10, decay_steps=10, workdir=str(tmp_path))
  assert "--decay_steps=10" in str(e.value) and "--decay_steps=4" in str(e.value)


@pytest.mark.parametrize("changes,message", [
    (dict(optimizer="nosuch"), "--optimizer=nosuch: allowed: adam, adamw, sgd, rmsprop, lion"),
    (dict(weight_decay=0.1), "--weight_decay=0.1: applies only to --optimizer=adamw, lion"),
    (dict(optimizer="sgd", weight_decay=0.1),
     "--weight_decay=0.1: applies only to --optimizer=adamw, lion"),
    (dict(momentum=0.9), "--momentum=0.9: applies only to --optimizer=sgd, rmsprop"),
    (dict(optimizer="lion", momentum=0.9), "--momentum=0.9: applies only to --optimizer=sgd"),
    (dict(optimizer="adamw", weight_decay=-1.0), "--weight_decay=-1.0: must be a number >= 0"),
    (dict(optimizer="sgd", momentum=1.0), "--momentum=1.0: must be a number in [0, 1)"),
    (dict(lr_schedule="nosuch"), "--lr_schedule=nosuch: allowed: constant, cosine"),
    (dict(warmup_steps=5), "--warmup_steps=5: applies only to --lr_schedule=warmup_cosine"),
    (dict(lr_schedule="cosine", warmup_steps=5),
     "--warmup_steps=5: applies only to --lr_schedule=warmup_cosine"),
    (dict(lr_schedule="cosine", decay_steps=0), "--decay_steps=0: must be an integer >= 1"),
    (dict(decay_steps=5), "--decay_steps=5: applies only to --lr_schedule=cosine, "
     "warmup_cosine, linear"),
    (dict(lr_schedule="warmup_cosine"), "--warmup_steps=0: --lr_schedule=warmup_cosine needs an "
     "integer in [1, 4)"),
    (dict(lr_schedule="warmup_cosine", warmup_steps=10, decay_steps=10),
     "--warmup_steps=10: --lr_schedule=warmup_cosine needs an integer in [1, 10)"),
])
def test_bad_recipe_settings_are_one_line_and_write_nothing(changes, message, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(experiment.RunError) as e:
    _run(TINY, workdir=str(workdir), **changes)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
  assert not workdir.exists()


def test_the_launcher_refuses_a_recipe_flag_that_means_nothing(tmp_path):
  with pytest.raises(SystemExit) as e:
    with flagsaver.flagsaver(task="adding", seq_len=6, hidden_size=4, num_steps=2,
                             optimizer="adam", weight_decay=0.1, workdir=str(tmp_path / "r")):
      launch_main.main(["launch.main"])
  assert str(e.value.code) == \
      "error: --weight_decay=0.1: applies only to --optimizer=adamw, lion"
  assert not (tmp_path / "r").exists()


def test_a_groups_rates_share_one_scheduled_program():
  """Two runs' rates live in one stacked optimizer state: the vmapped update is each run's own."""
  opt = train.make_optimizer(1.0, optimizer="sgd", lr_schedule="linear", decay_steps=4)
  params = _grads(jax.random.key(1))
  stacked = jax.tree.map(lambda x: jnp.stack([x, x]), params)
  state = jax.vmap(opt.init)(stacked)
  state = train.set_learning_rate(train.TrainState(0, stacked, state),
                                  jnp.array([0.1, 0.2])).opt_state
  grads = jax.tree.map(lambda x: jnp.stack([x, x]), _grads(jax.random.key(2)))
  for k in range(2):
    updates, state = jax.vmap(opt.update)(grads, state, stacked)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):  # k = 1: multiplier 3/4
    np.testing.assert_allclose(u[0], -0.1 * 0.75 * g[0], rtol=1e-6)
    np.testing.assert_allclose(u[1], -0.2 * 0.75 * g[1], rtol=1e-6)
