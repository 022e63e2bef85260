"""Cells and tasks of the user's own in the launcher (`--model=MODULE:NAME`, `--task=MODULE:NAME`,
`cells.register`, `tasks.register`): trained, grouped, stacked, resumed, summarized, inspected
and compared like built-ins; every unusable one refused in one line before anything is written."""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from launch import main as launch_main
from seqjax import cells, experiment, introspect, report, tasks
from seqjax.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "mypkg", "cells.py")
FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS(["launch.main"])

TINY = dict(hidden_size=4, batch_size=8, num_steps=4, eval_every=2, eval_size=8)

# A user module: an Elman cell written from scratch (no fast loop), and broken factories.
CELLS = '''
import jax, jax.numpy as jnp
from seqjax import cells

def elman(hidden_size):
  def init(key, input_size):
    kx, kh = jax.random.split(key)
    return {"W": 0.5 * jax.random.normal(kx, (input_size, hidden_size)),
            "U": 0.5 * jax.random.normal(kh, (hidden_size, hidden_size))}
  def initial_state(params, batch_shape=()):
    return cells.RNNState(h=jnp.zeros((*batch_shape, hidden_size)))
  def step(params, state, x):
    h = jnp.tanh(x @ params["W"] + state.h @ params["U"])
    return cells.RNNState(h=h), h
  return cells.Cell(init, initial_state, step, "elman", hidden_size)

def wide(hidden_size):
  return cells.rnn(hidden_size + 1)._replace(hidden_size=hidden_size)

def number(hidden_size):
  return 3

def raises(hidden_size):
  raise ValueError("no such width\\nsecond line")

def bad_step(hidden_size):
  def step(params, state, x):
    raise RuntimeError("step is broken")
  return cells.rnn(hidden_size)._replace(step=step, fast_loop=None)

NOT_CALLABLE = 3
'''

TASKS = '''
import jax, jax.numpy as jnp
from seqjax import tasks
from seqjax.tasks.base import accuracy, softmax_cross_entropy

DEFAULTS = dict(seq_len=5, hidden_size=4, batch_size=8, num_steps=4, learning_rate=0.01)

def parity(seq_len):
  """Is the number of ones odd? Read at the last step."""
  def sample(key, batch_size):
    bits = jax.random.bernoulli(key, 0.5, (batch_size, seq_len)).astype(jnp.int32)
    return tasks.Batch(xs=bits[..., None].astype(jnp.float32), ys=jnp.sum(bits, axis=1) % 2,
                       lengths=None)
  def losses(logits, batch):
    return {"loss": softmax_cross_entropy(logits, batch.ys),
            "accuracy": accuracy(logits, batch.ys)}
  return tasks.Task("parity", 1, 2, False, True, sample, sample, losses, seq_len)

def fixed():
  return parity(3)

def copy_of_mine(seq_len):  # sequences of 2S + seq_len steps, as copy's
  return tasks.get("copy", seq_len=seq_len)._replace(name="copy_of_mine")

def bad_losses(seq_len):
  return parity(seq_len)._replace(losses=lambda outputs, batch: {"mse": outputs[:, 0]})

def wrong_width(seq_len):
  return parity(seq_len)._replace(input_size=3)
'''

NO_RATE = '''
from plugtasks import parity
DEFAULTS = dict(seq_len=5, hidden_size=4, batch_size=8, num_steps=4)
'''


@pytest.fixture(scope="module")
def user_modules(tmp_path_factory):
  """plugcells, plugtasks and plugnorate importable (on sys.path and PYTHONPATH)."""
  folder = tmp_path_factory.mktemp("user_modules")
  for name, text in (("plugcells", CELLS), ("plugtasks", TASKS), ("plugnorate", NO_RATE)):
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
  sys.path.insert(0, str(folder))
  yield folder
  sys.path.remove(str(folder))
  for name in ("plugcells", "plugtasks", "plugnorate"):
    sys.modules.pop(name, None)


def _run(**settings):
  return experiment.run(Settings(**{**TINY, **settings}), log=lambda line: None)


def _rows(workdir):
  return report.read_run(str(workdir))[1]


def _assert_same_rows(got, want):
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    for key in set(w) - {"examples_per_sec", "wall_time"}:
      np.testing.assert_allclose(g[key], w[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_a_user_cell_trains_as_the_same_cell_registered_and_resumes(user_modules, tmp_path):
  import plugcells
  whole = _run(model="plugcells:elman", task="adding", seq_len=6, workdir=str(tmp_path / "w"))
  rows = whole[str(tmp_path / "w")]
  assert [r["step"] for r in rows] == [0, 2, 4] and all(np.isfinite(r["eval_loss"]) for r in rows)
  config = json.loads((tmp_path / "w" / "config.json").read_text())
  assert config["model"] == "plugcells:elman"
  with open(plugcells.__file__, "rb") as f:  # its source file fingerprinted, as hashlib does
    digest = hashlib.sha256(f.read()).hexdigest()
  assert config["source_sha256"] == [{"step": 0, "model": {
      "spec": "plugcells:elman", "file": os.path.abspath(plugcells.__file__), "sha256": digest}}]
  # registered under a name: the same computation, equal to float rounding
  cells.register("elman_registered", plugcells.elman)
  same = _run(model="elman_registered", task="adding", seq_len=6, workdir=str(tmp_path / "r"))
  _assert_same_rows(same[str(tmp_path / "r")], rows)
  # resumed from step 2 (the recorded MODULE:NAME imported again) ends where the whole run did
  _run(model="plugcells:elman", task="adding", seq_len=6, num_steps=2, workdir=str(tmp_path / "s"))
  _run(model="plugcells:elman", task="adding", seq_len=6, workdir=str(tmp_path / "s"))
  _assert_same_rows(_rows(tmp_path / "s"), rows)
  assert _rows(tmp_path / "s")[-1]["eval_loss"] == rows[-1]["eval_loss"]
  # summarized and inspected like a built-in's run
  table = report.summary_table([str(tmp_path / "w")]).splitlines()
  assert "| plugcells:elman | adding | 6 | 4 | 4 |" in table[2]
  written = introspect.inspect_runs([str(tmp_path / "w")], None, 2, 3)[1]
  assert all(os.path.exists(p) for p in written) and any(p.endswith("states.png") for p in written)


def test_a_user_cell_stacks_and_groups_and_its_group_reports_the_sample_sd(user_modules, tmp_path):
  group = _run(model="plugcells:elman", task="adding", seq_len=6, num_layers=2, seeds=(0, 1),
               workdir=str(tmp_path / "g"))
  for seed in (0, 1):  # each run of the group equals its solo run
    solo = _run(model="plugcells:elman", task="adding", seq_len=6, num_layers=2, seed=seed,
                workdir=str(tmp_path / f"solo{seed}"))
    _assert_same_rows(group[str(tmp_path / "g" / f"s{seed}")], solo[str(tmp_path / f"solo{seed}")])
  config = json.loads((tmp_path / "g" / "s1" / "config.json").read_text())
  assert config["num_layers"] == 2 and config["model"] == "plugcells:elman"
  finals = [_rows(tmp_path / "g" / f"s{s}")[-1]["eval_mse"] for s in (0, 1)]
  lines = (tmp_path / "g" / "results.md").read_text().splitlines()
  assert "final mse (mean ± sample sd over seeds)" in lines[5]
  mean, sd = np.mean(finals), abs(finals[0] - finals[1]) / np.sqrt(2)  # n - 1 = 1
  assert f"| {mean:.3g} ± {sd:.2g} |" in lines[7]


def test_a_user_task_takes_its_modules_defaults(user_modules, tmp_path):
  out = _run(model="lstm", task="plugtasks:parity", hidden_size=None, batch_size=None,
             num_steps=None, workdir=str(tmp_path / "t"))
  config = json.loads((tmp_path / "t" / "config.json").read_text())
  assert (config["seq_len"], config["hidden_size"], config["batch_size"], config["num_steps"],
          config["learning_rate"]) == (5, 4, 8, 4, 0.01)
  assert "bit_order" not in config and "permute" not in config  # mean nothing for it
  assert 0 <= out[str(tmp_path / "t")][-1]["eval_accuracy"] <= 1
  tasks.register("parity_registered", __import__("plugtasks").parity, dict(seq_len=5))
  with pytest.raises(experiment.RunError, match=r"^--task=parity_registered: no default "
                     r"hidden_size \(its DEFAULTS lack it\); give --hidden_size$"):
    _run(model="lstm", task="parity_registered", hidden_size=None, workdir=str(tmp_path / "x"))
  same = _run(model="lstm", task="parity_registered", learning_rate=0.01,
              workdir=str(tmp_path / "r"))
  _assert_same_rows(same[str(tmp_path / "r")], out[str(tmp_path / "t")])
  assert tasks.get("plugtasks:parity", seq_len=7).seq_len == 7


def test_a_default_workdir_is_a_plain_folder_name():
  s = Settings(model="mypkg.cells:ln_lstm", task="adding", seed=1)
  assert re.fullmatch(r"runs/adding-mypkg\.cells-ln_lstm-T100-s1",
                      dataclasses.replace(s, workdir=None).resolved().workdir)


@pytest.mark.parametrize("settings,message", [
    (dict(model="no_such_module_xyz:f"),
     "--model=no_such_module_xyz:f: cannot import no_such_module_xyz (ModuleNotFoundError: "
     "No module named 'no_such_module_xyz')"),
    (dict(model="plugcells:missing"), "--model=plugcells:missing: plugcells has no missing"),
    (dict(model="plugcells:NOT_CALLABLE"), "--model=plugcells:NOT_CALLABLE: plugcells:NOT_CALLABLE "
     "is a int, not a factory (a callable)"),
    (dict(model="plugcells:raises"),
     "--model=plugcells:raises: the factory raised ValueError: no such width"),
    (dict(model="plugcells:number"),
     "--model=plugcells:number: the factory returned int, not a seqjax Cell"),
    (dict(model="plugcells:wide"), "--model=plugcells:wide: one step on a batch of 2 gave h of "
     "shape (2, 5), expected (2, 4) = [*batch, hidden_size]"),
    (dict(model="plugcells:bad_step"), "--model=plugcells:bad_step: init, initial_state and one "
     "step on a batch of 2 (input_size 2) raised RuntimeError: step is broken"),
    (dict(model="plugcells:elman", dtype="bfloat16"), "--model=plugcells:elman: the factory "
     "raised TypeError: elman() got an unexpected keyword argument 'dtype'"),
    (dict(model="transformer"), "--model=transformer: unknown cell 'transformer'; allowed: rnn"),
    (dict(task="plugtasks:nothing"), "--task=plugtasks:nothing: plugtasks has no nothing"),
    (dict(task="plugnorate:parity"),
     "--task=plugnorate:parity: no default learning_rate (its DEFAULTS lack it); give "
     "--learning_rate"),
    (dict(task="plugtasks:bad_losses"), "--task=plugtasks:bad_losses: losses must return a dict "
     "with \"loss\" (and each metric) of shape [batch]; got {'mse': (2,)}"),
    (dict(task="plugtasks:wrong_width"), "--task=plugtasks:wrong_width: sample(key, 2) gave xs of "
     "shape (2, 5, 1), expected (2, 5, 3) = [batch, seq_len, input_size]"),
    (dict(task="plugtasks:fixed"), "--seq_len=5: the task plugtasks:fixed made sequences of "
     "length 3"),
    (dict(task="plugtasks:parity", permute=True), "--permute=True: applies only to the digits, "
     "mnist tasks (and tasks of yours whose factory takes it)"),
    (dict(task="adding", eval_split="validation"),
     "--eval_split=validation: applies only to the digits, mnist, uea, text tasks"),
])
def test_unusable_user_code_is_one_line_and_nothing_is_written(user_modules, tmp_path, settings,
                                                               message):
  workdir = tmp_path / "run"
  flag_values = {**TINY, "seq_len": 5, "workdir": str(workdir), **settings}
  if "task" not in settings:
    flag_values["task"] = "adding"
  with flagsaver.flagsaver(**flag_values), pytest.raises(SystemExit) as e:
    launch_main.main(["launch.main"])
  text = str(e.value.code)
  assert text == f"error: {message}" or text.startswith(f"error: {message}"), text
  assert "\n" not in text and not workdir.exists()


def test_register_refuses_built_in_and_folder_unsafe_names():
  with pytest.raises(ValueError, match="'lstm' is a built-in name"):
    cells.register("lstm", cells.rnn)
  with pytest.raises(ValueError, match="it names run folders"):
    tasks.register("a/b", lambda: None, {})
  with pytest.raises(ValueError, match="must be a dict"):
    tasks.register("ok", lambda: None, None)


def test_the_readme_example_is_the_tested_file_and_is_a_layer_normalised_lstm():
  readme = open(os.path.join(ROOT, "README.md")).read()
  section = readme.split("## Your own cell in the launcher", 1)[1]
  block = section.split("```python\n", 1)[1].split("```", 1)[0]
  assert block == open(EXAMPLE).read()
  namespace = {}
  exec(compile(block, EXAMPLE, "exec"), namespace)
  H, F, B = 3, 2, 2
  cell = namespace["ln_lstm"](H)
  params = cell.init(jax.random.key(0), F)
  params = {k: v + 0.3 * jax.random.normal(jax.random.key(i), v.shape)
            for i, (k, v) in enumerate(sorted(params.items()))}
  assert {"g_x", "g_h"} <= set(params)  # the gains, read by update directly
  xs = np.asarray(jax.random.normal(jax.random.key(9), (B, 4, F)), np.float64)
  state = cell.initial_state(params, (B,))
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731

  def norm(z):
    z = z.reshape(B, 4, H)
    return ((z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)).reshape(
        B, 4 * H)

  h, c = np.zeros((B, H)), np.zeros((B, H))
  for t in range(xs.shape[1]):  # the equations in float64, gate by gate
    z = norm(xs[:, t] @ p["W_x"]) * p["g_x"] + norm(h @ p["W_h"]) * p["g_h"] + p["b"][None]
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    with jax.numpy_rank_promotion("allow"):  # user code: the gains broadcast implicitly
      state, got = cell.step(params, state, jnp.asarray(xs[:, t], jnp.float32))
    np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_readme_comparison_runs_the_example_from_pythonpath(tmp_path):
  # launch.compare defines flags launch.main also defines: it runs in a process of its own
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(EXAMPLE)),
                                                     ROOT]))
  out = subprocess.run([sys.executable, "-m", "launch.compare", "--task=adding",
                        "--models=rwa,mypkg.cells:ln_lstm", "--seeds=0,1", "--seq_len=5",
                        "--hidden_size=4", "--batch_size=8", "--num_steps=2", "--eval_every=2",
                        "--eval_size=8"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  root = tmp_path / "runs" / "compare-adding-T5"
  assert {"rwa", "mypkg.cells-ln_lstm", "compare.png", "results.md"} <= {
      p.name for p in root.iterdir()}
  config = json.loads((root / "mypkg.cells-ln_lstm" / "s1" / "config.json").read_text())
  assert config["model"] == "mypkg.cells:ln_lstm" and config["seed"] == 1
  table = (root / "results.md").read_text()
  assert "| mypkg.cells:ln_lstm | adding | 5 | 4 | 2 |" in table  # the rows over seeds
  assert "(mean ± sample sd over seeds; evaluated every 2 steps)" in table


def test_the_readme_task_example_trains_with_its_module_defaults(tmp_path, monkeypatch):
  # docs/examples/mypkg/tasks.py, as README's `--task=mypkg.tasks:parity` names it
  monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(EXAMPLE)))
  task = tasks.get("mypkg.tasks:parity", seq_len=7)
  batch = task.sample(jax.random.key(3), 16)
  bits = np.asarray(batch.xs[..., 0])
  assert set(np.unique(bits)) <= {0.0, 1.0} and bits.shape == (16, 7)
  np.testing.assert_array_equal(batch.ys, bits.sum(axis=1).astype(int) % 2)
  logits = jax.random.normal(jax.random.key(4), (16, 2))
  values = task.losses(logits, batch)
  logp = np.asarray(jax.nn.log_softmax(logits))
  np.testing.assert_allclose(values["loss"], -logp[np.arange(16), np.asarray(batch.ys)], rtol=1e-6)
  np.testing.assert_array_equal(values["accuracy"], np.argmax(logp, 1) == np.asarray(batch.ys))
  out = experiment.run(Settings(task="mypkg.tasks:parity", model="lstm", num_steps=2,
                                batch_size=8, eval_every=2, eval_size=8,
                                workdir=str(tmp_path / "p")), log=lambda line: None)
  config = json.loads((tmp_path / "p" / "config.json").read_text())
  from mypkg import tasks as example
  assert {k: config[k] for k in ("seq_len", "hidden_size", "learning_rate")} == {
      k: example.DEFAULTS[k] for k in ("seq_len", "hidden_size", "learning_rate")}
  assert 0 <= out[str(tmp_path / "p")][-1]["eval_accuracy"] <= 1
  sys.modules.pop("mypkg.tasks", None)


def test_a_user_task_may_make_sequences_longer_than_its_seq_len(user_modules, tmp_path):
  # as the built-in copy (2S + T) and multi_copy do: the same run as the built-in's
  same = dict(model="lstm", seq_len=3, learning_rate=0.01)  # the module's DEFAULTS' rate
  out = _run(task="plugtasks:copy_of_mine", workdir=str(tmp_path / "u"), **same)
  want = _run(task="copy", workdir=str(tmp_path / "c"), **same)
  _assert_same_rows(out[str(tmp_path / "u")], want[str(tmp_path / "c")])
  assert json.loads((tmp_path / "u" / "config.json").read_text())["seq_len"] == 3
