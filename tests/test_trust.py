"""Run folders one can trust: one experiment per folder, user code fingerprinted, exact metrics
on resume, the step-0 evaluation, optimizers of one's own, TensorBoard's learning rate,
gradient norm and hparams. Every refusal leaves the folder's files exactly as they were."""

import dataclasses
import hashlib
import json
import os
import signal
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from seqjax import experiment, train

TINY = experiment.Settings(model="lstm", task="adding", seq_len=6, hidden_size=4, batch_size=8,
                           num_steps=4, eval_every=2, eval_size=16)
TIMING = ("wall_time", "examples_per_sec")


def _run(s, log=lambda line: None, **changes):
  return experiment.run(dataclasses.replace(s, **changes), log=log)


def _rows(folder):
  with open(os.path.join(folder, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _hashes(folder):
  """{path: sha256} of every file under `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def _refused(s, folder, match, **changes):
  """The run refused in one line matching `match`, every file under `folder` unchanged."""
  before = _hashes(folder)
  with pytest.raises(experiment.RunError, match=match) as e:
    _run(s, **changes)
  assert "\n" not in str(e.value)
  assert _hashes(folder) == before
  return str(e.value)


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
  """A folder on sys.path for the test's own modules, forgotten afterwards."""
  folder = tmp_path / "modules"
  folder.mkdir()
  monkeypatch.syspath_prepend(str(folder))
  before = set(sys.modules)
  yield folder
  for name in set(sys.modules) - before:
    del sys.modules[name]


def test_one_experiment_per_folder(tmp_path):
  single, group = str(tmp_path / "single"), str(tmp_path / "group")
  _run(TINY, num_steps=2, workdir=single)
  _run(TINY, num_steps=2, seeds=(0, 1), workdir=group)
  line = _refused(TINY, tmp_path, "holds a group of runs", workdir=group)
  assert line.startswith(f"--workdir={group} holds a group of runs (group.json)")
  _refused(TINY, tmp_path, f"--workdir={single} holds a single run", seeds=(0, 1),
           workdir=single)
  _refused(TINY, tmp_path, f"^--hidden_size=5: {single} holds another experiment, with "
           "--hidden_size=4; use another --workdir$", hidden_size=5, workdir=single)
  _refused(TINY, tmp_path, f"--seeds=0,1,2: {group} holds another experiment, with --seeds=0,1;",
           seeds=(0, 1, 2), workdir=group)
  _refused(TINY, tmp_path, "--readout=attention: .* with --readout=linear;",
           readout="attention", seeds=(0, 1), workdir=group)
  # a subfolder of the group is an ordinary run: another seed there is another experiment
  _refused(TINY, tmp_path, "--seed=1: .* with --seed=0;", seed=1,
           workdir=os.path.join(group, "s0"))


def _sigterm_at(step):
  """A log that sends this process SIGTERM on the progress line of `step` (between
  evaluations): the run checkpoints there and stops, as a scheduler's SIGTERM makes it."""
  def log(line):
    if line.startswith(f"step {step}/") and " ETA " in line:
      os.kill(os.getpid(), signal.SIGTERM)
  return log


@pytest.mark.parametrize("group", [False, True])
def test_a_run_stopped_between_evaluations_resumes_to_the_same_metrics(group, tmp_path):
  s = dataclasses.replace(TINY, num_steps=6, eval_every=3,
                          **({"seeds": (0, 1)} if group else {}))
  whole = _run(s, workdir=str(tmp_path / "whole"))
  with pytest.raises(experiment.Stopped):
    experiment.run(dataclasses.replace(s, workdir=str(tmp_path / "cut")), log=_sigterm_at(5),
                   progress_secs=0.0)
  cut = _run(s, workdir=str(tmp_path / "cut"))
  for (_, want), (_, got) in zip(sorted(whole.items()), sorted(cut.items())):
    assert [r["step"] for r in got] == [0, 3, 6]
    for g, w in zip(got, want):  # every value but the timings exactly: the same floats
      assert {k: v for k, v in g.items() if k not in TIMING} == \
          {k: v for k, v in w.items() if k not in TIMING}
    # the step-0 row: the untrained model's evaluation only
    assert set(got[0]) == {"step", "wall_time", "eval_loss", "eval_mse"}


def test_the_step_0_evaluation_counts_for_the_best_checkpoint(tmp_path):
  (rows,) = _run(TINY, num_steps=0, workdir=str(tmp_path)).values()
  assert [r["step"] for r in rows] == [0]
  with open(tmp_path / "best.json") as f:
    assert json.load(f) == {"step": 0, "metric": "eval_mse", "value": rows[0]["eval_mse"]}


CELL = """
from seqjax import cells

def my_rnn(hidden_size):
  return cells.rnn(hidden_size)
"""


def test_a_changed_user_file_is_refused_unless_allowed(user_modules, tmp_path):
  path = user_modules / "mycells.py"
  path.write_text(CELL)
  s = dataclasses.replace(TINY, model="mycells:my_rnn", workdir=str(tmp_path / "run"))
  _run(s, num_steps=2)
  with open(tmp_path / "run" / "config.json") as f:
    (first,) = json.load(f)["source_sha256"]
  assert first == {"step": 0, "model": {"spec": "mycells:my_rnn", "file": str(path),
                                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
  path.write_text(CELL + "# changed\n")
  line = _refused(s, tmp_path / "run", f"--model=mycells:my_rnn: {path} changed since the run",
                  num_steps=4)
  assert "--allow_code_change" in line
  _run(s, num_steps=4, allow_code_change=True)
  with open(tmp_path / "run" / "config.json") as f:
    config = json.load(f)
  assert "allow_code_change" not in config  # a permission, not a setting
  assert config["source_sha256"] == [first, {"step": 2, "model": dict(
      first["model"], sha256=hashlib.sha256(path.read_bytes()).hexdigest())}]
  _run(s, num_steps=6)  # the new code is now the recorded one


OPTIMIZERS = """
import optax

def my_adam(learning_rate):
  return optax.adam(learning_rate)

def raises(learning_rate):
  raise ValueError("no such rate")

def number(learning_rate):
  return 3

def breaks_on_update(learning_rate):
  def update(updates, state, params=None):
    raise RuntimeError("update is broken")
  return optax.GradientTransformation(lambda params: (), update)
"""


@pytest.mark.parametrize("spec, message", [
    ("nomodule:adam", "--optimizer=nomodule:adam: cannot import nomodule"),
    ("myopt:missing", "--optimizer=myopt:missing: myopt has no missing"),
    ("myopt:raises", "--optimizer=myopt:raises: the factory raised ValueError: no such rate"),
    ("myopt:number", "--optimizer=myopt:number: the factory returned int, not an "
     "optax.GradientTransformation"),
    ("myopt:breaks_on_update", "--optimizer=myopt:breaks_on_update: init and update on a tiny "
     "parameter tree .* raised RuntimeError: update is broken"),
    ("adagrad", "--optimizer=adagrad: allowed: adam, adamw, sgd, rmsprop, lion, or MODULE:NAME"),
])
def test_a_bad_optimizer_is_one_line_before_any_file(spec, message, user_modules, tmp_path):
  (user_modules / "myopt.py").write_text(OPTIMIZERS)
  with pytest.raises(experiment.RunError, match=message) as e:
    _run(TINY, optimizer=spec, workdir=str(tmp_path / "run"))
  assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("rates", [{"learning_rate": 0.01},
                                   {"learning_rates": (0.01, 0.03), "lr_schedule": "cosine"}])
def test_a_user_optimizer_wrapping_adam_equals_the_built_in(rates, user_modules, tmp_path):
  (user_modules / "myopt.py").write_text(OPTIMIZERS)
  s = dataclasses.replace(TINY, **rates)
  mine = _run(s, optimizer="myopt:my_adam", workdir=str(tmp_path / "mine"))
  built_in = _run(s, workdir=str(tmp_path / "adam"))
  for (_, got), (_, want) in zip(sorted(mine.items()), sorted(built_in.items())):
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in got] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in want]
  config_dir = tmp_path / "mine" / ("lr0.01-s0" if "learning_rates" in rates else "")
  with open(config_dir / "config.json") as f:
    config = json.load(f)
  assert config["optimizer"] == "myopt:my_adam"
  assert config["source_sha256"][0]["optimizer"]["sha256"] == hashlib.sha256(
      (user_modules / "myopt.py").read_bytes()).hexdigest()


def _board(folder):
  acc = event_accumulator.EventAccumulator(os.path.join(folder, "tensorboard"))
  acc.Reload()
  return acc


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_tensorboard_shows_the_rate_the_gradient_norm_and_the_settings(schedule, tmp_path):
  s = dataclasses.replace(TINY, learning_rate=0.01, lr_schedule=schedule, clip_norm=1e-3,
                          tensorboard=True, workdir=str(tmp_path))
  _run(s)
  acc = _board(tmp_path)
  rates = [(e.step, e.value) for e in acc.Scalars("learning_rate")]
  multiplier = train.lr_multiplier(schedule, 0, 4)
  want = [(k, 0.01 * (1.0 if multiplier is None else float(multiplier(k)))) for k in (0, 2, 4)]
  assert [k for k, _ in rates] == [0, 2, 4]
  np.testing.assert_allclose([v for _, v in rates], [v for _, v in want], rtol=1e-6)
  if schedule == "cosine":  # falling: 0.01, 0.005, 0
    np.testing.assert_allclose([v for _, v in rates], [0.01, 0.005, 0.0], atol=1e-9)
  # the gradient norm before clipping: far above --clip_norm, at every evaluation after step 0
  norms = [(e.step, e.value) for e in acc.Scalars("grad_norm")]
  assert [k for k, _ in norms] == [2, 4] and all(v > 1e-2 for _, v in norms)
  # the settings, in TensorBoard's hparams view
  content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
  session = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  assert session.hparams["lr_schedule"].string_value == schedule
  assert session.hparams["hidden_size"].number_value == 4
  assert session.hparams["model"].string_value == "lstm"
  experiment_info = hparams_metadata.parse_experiment_plugin_data(
      content[hparams_metadata.EXPERIMENT_TAG])
  assert {m.name.tag for m in experiment_info.metric_infos} == {"eval_loss", "eval_mse"}


def test_the_gradient_norm_is_optax_global_norm_of_the_gradient():
  """The train step's grad_norm against optax's global norm of jax.grad of the same loss."""
  import jax
  import jax.numpy as jnp
  from seqjax.settings import train_config, validate
  s = dataclasses.replace(TINY, learning_rate=0.01).resolved().with_learning_rate()
  tcfg = train_config(s, validate(s))
  state = train.init_state(tcfg, train.param_key(0))
  batch = tcfg.task.sample(jax.random.fold_in(train.data_key(0), 0), s.batch_size)
  grads = jax.grad(lambda p: jnp.mean(train.batch_losses(tcfg, p, batch)["loss"]))(state.params)
  want = np.sqrt(sum(np.sum(np.float64(g) ** 2) for g in jax.tree.leaves(grads)))
  _, metrics = train.one_run_step(tcfg)(state, 0)
  np.testing.assert_allclose(float(metrics["grad_norm"]), want, rtol=1e-5)
