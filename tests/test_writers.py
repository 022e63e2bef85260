"""What a run writes besides its settings: the rows sent to writers (TensorBoard's and one's own),
the provenance in config.json, the best checkpoint, and examples_per_sec without compilation."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import seqjax
from seqjax import experiment, train, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = experiment.Settings(model="lstm", task="adding", seq_len=6, hidden_size=4, batch_size=8,
                           num_steps=4, eval_every=2, eval_size=16)


def _run(s, writers=(), **changes):
  return experiment.run(dataclasses.replace(s, **changes), log=lambda line: None,
                        writers=writers)


def _rows(folder):
  with open(os.path.join(folder, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _json(path):
  with open(path) as f:
    return json.load(f)


class Recorder:
  """A writer keeping what it is sent, as metrics.jsonl rows."""
  made = []

  def __init__(self, folder):
    self.folder, self.rows, self.closed = folder, [], False
    Recorder.made.append(self)

  def write(self, step, scalars):
    assert not self.closed and "step" not in scalars
    self.rows.append({"step": step, **scalars})

  def close(self):
    self.closed = True


@pytest.fixture
def recorder():
  Recorder.made = []
  return Recorder


def _tensorboard_rows(folder):
  acc = event_accumulator.EventAccumulator(os.path.join(folder, "tensorboard"))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_and_python_writers_get_every_row_of_every_run(tmp_path, recorder):
  # lr 1e19 diverges at step 2 (see test_groups): its metrics.jsonl row is sent too
  s = dataclasses.replace(TINY, model="rnn", seeds=(0, 1), learning_rates=(1e-3, 1e19),
                          tensorboard=True)
  with pytest.raises(experiment.Diverged):
    _run(s, writers=[recorder], workdir=str(tmp_path))
  by_folder = {w.folder: w for w in recorder.made}
  runs = [r.workdir for r in dataclasses.replace(s, workdir=str(tmp_path)).runs()]
  assert sorted(by_folder) == sorted(runs) and all(w.closed for w in recorder.made)
  assert not (tmp_path / "tensorboard").exists()  # the group folder is no run
  for run in runs:
    rows = _rows(run)
    assert by_folder[run].rows == rows
    board = _tensorboard_rows(run)
    # and the training scalars, TensorBoard's only (test_trust checks their values)
    assert set(board) - {"learning_rate", "grad_norm"} == {k for r in rows for k in r} - {"step"}
    for key, events in board.items():
      if key in ("learning_rate", "grad_norm"):
        continue
      want = [(r["step"], r[key]) for r in rows if key in r]
      assert [step for step, _ in events] == [step for step, _ in want], key
      np.testing.assert_array_equal(np.float32([v for _, v in events]),
                                    np.float32([v for _, v in want]), err_msg=key)
  assert _rows(tmp_path / "lr1e+19-s1")[1:] == [{"step": 2, "diverged_at_step": 2}]


@pytest.mark.slow
def test_a_resumed_run_sends_only_its_new_rows(tmp_path, recorder):
  _run(TINY, writers=[recorder], workdir=str(tmp_path))
  _run(TINY, writers=[recorder], num_steps=8, workdir=str(tmp_path))
  first, second = recorder.made
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == [0, 2, 4, 6, 8]
  assert first.rows == rows[:3] and second.rows == rows[3:] and second.closed


@pytest.mark.slow
def test_writers_are_closed_when_a_run_stops(tmp_path, recorder):
  class Failing(Recorder):
    def write(self, step, scalars):
      raise OSError("disk full")

  with pytest.raises(OSError):  # an error in a writer ends the run, and every writer is closed
    _run(TINY, writers=[recorder, Failing], workdir=str(tmp_path / "a"))
  assert len(recorder.made) == 2 and all(w.closed for w in recorder.made)

  class Terminating(Recorder):  # SIGTERM after the first row: checkpoint, close, stop
    def write(self, step, scalars):
      super().write(step, scalars)
      os.kill(os.getpid(), signal.SIGTERM)

  Recorder.made = []
  with pytest.raises(experiment.Stopped) as e:
    _run(TINY, writers=[Terminating], num_steps=100, workdir=str(tmp_path / "b"))
  assert e.value.exit_code == 128 + signal.SIGTERM
  (w,) = recorder.made
  assert w.closed and w.rows == _rows(tmp_path / "b") and len(w.rows) == 1


@pytest.mark.slow
def test_config_records_versions_commit_and_command_line(tmp_path):
  group = tmp_path / "group"
  experiment.run(dataclasses.replace(TINY, seeds=(0, 1), num_steps=2, workdir=str(group)),
                 log=lambda line: None, argv=["launch.main", "--seeds=0,1"])
  head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
  assert len(head) == 40
  for path in (group / "group.json", group / "s0" / "config.json", group / "s1" / "config.json"):
    config = _json(path)
    assert config["seqjax_version"] == seqjax.__version__
    assert config["jax_version"] == jax.__version__
    assert config["git_commit"] == head
    assert config["argv"] == ["launch.main", "--seeds=0,1"]
  # not settings: a resume with another command line is the same experiment, and updates them
  experiment.run(dataclasses.replace(TINY, seeds=(0, 1), num_steps=4, workdir=str(group)),
                 log=lambda line: None, argv=["again"])
  assert _json(group / "s1" / "config.json")["argv"] == ["again"]


def test_the_commit_is_none_outside_a_checkout(tmp_path, monkeypatch):
  monkeypatch.setattr(seqjax, "__file__", str(tmp_path / "seqjax" / "__init__.py"))
  workdir.git_commit.cache_clear()
  try:
    assert workdir.git_commit() is None
  finally:
    workdir.git_commit.cache_clear()


@pytest.mark.slow
def test_the_best_checkpoint_is_the_best_evaluation_and_survives_a_worse_resume(tmp_path):
  s = dataclasses.replace(TINY, learning_rate=0.02, num_steps=6)
  _run(s, workdir=str(tmp_path))
  _run(s, learning_rate=3.0, num_steps=12, workdir=str(tmp_path))  # a rate that makes it worse
  rows = _rows(tmp_path)
  best = _json(tmp_path / "best.json")
  want = min(rows, key=lambda r: r["eval_mse"])
  assert best == {"step": want["step"], "metric": "eval_mse", "value": want["eval_mse"]}
  assert best["step"] != rows[-1]["step"] and best["step"] <= 6  # found before the resume
  # the best checkpoint holds that evaluation's state: evaluated again it gives that value
  s_best, tcfg, params = workdir.load(str(tmp_path), "best")
  held_out = tcfg.task.held_out(train.eval_key(s_best.seed), s_best.eval_size)
  np.testing.assert_allclose(float(train.make_evaluate(tcfg)(params, held_out)["mse"]),
                             best["value"], rtol=1e-5)
  _, _, last = workdir.load(str(tmp_path))
  assert not np.array_equal(jax.tree.leaves(last)[0], jax.tree.leaves(params)[0])


def test_loading_a_missing_best_checkpoint_is_one_line(tmp_path):
  with pytest.raises(experiment.RunError) as e:
    workdir.load(str(tmp_path), "best")
  assert "no config.json" in str(e.value)
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "checkpoint.msgpack").write_bytes(b"")
  with pytest.raises(experiment.RunError) as e:
    workdir.load(str(tmp_path), "best")
  assert str(e.value) == (f"--workdir={tmp_path}: no checkpoint_best.msgpack (no evaluation of "
                          "this run was saved as its best)")


class _Clock:
  now = 0.0

  def __call__(self):
    return self.now


class _Program:
  """Runs `fn` on a fake clock: 1 s each execution, `first` s more at the first."""

  def __init__(self, fn, clock, first):
    self.fn, self.clock, self.first = fn, clock, first

  def __call__(self, *args):
    self.clock.now += 1.0 + self.first
    self.first = 0.0
    return self.fn(*args)


class _SlowToCompile(_Program):
  """A jitted program whose compilation costs 1000 fake seconds: all at its first call (as
  jax.jit compiles), or, compiled ahead, 500 at compile() and 500 at its first execution
  (XLA:CPU generates part of the code then)."""

  def __init__(self, jitted, clock):
    super().__init__(jitted, clock, 1000.0)

  def lower(self, *args):
    lowered, clock = self.fn.lower(*args), self.clock

    class Lowered:
      def compile(self):
        clock.now += 500.0
        return _Program(lowered.compile(), clock, 500.0)

    return Lowered()


def test_the_first_rate_excludes_compilation(tmp_path, monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(experiment, "_clock", clock)
  for name in ("make_group_step", "make_group_evaluate"):
    make = getattr(train, name)
    monkeypatch.setattr(train, name, lambda *a, make=make, **k: _SlowToCompile(make(*a, **k),
                                                                                clock))
  rows = _run(TINY, workdir=str(tmp_path))[str(tmp_path)]
  # each interval: 2 steps and an evaluation, 1 s each, on the clock; 8 examples a step
  # (step 0: the untrained model's evaluation, before the first interval)
  assert set(rows[0]) == {"step", "wall_time", "eval_loss", "eval_mse"}
  assert [r["examples_per_sec"] for r in rows[1:]] == [2 * 8 / 3.0] * 2
  assert rows[0]["wall_time"] >= 2000  # the run's wall time does count the compilation


def test_tensorboardx_is_imported_only_by_runs_that_write_tensorboard_files():
  code = ("import sys; from launch import main; from seqjax import experiment, writers; "
          "assert 'tensorboardX' not in sys.modules")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr


def test_only_the_missing_libtpu_line_is_kept_out_of_the_terminal():
  import logging

  import launch

  logger = logging.getLogger("jax._src.xla_bridge")
  (drop,) = [f for f in logger.filters if isinstance(f, launch._NoMissingLibtpu)]

  def record(message):
    return logging.LogRecord(logger.name, logging.INFO, "xla_bridge.py", 1, message, (), None)

  assert not drop.filter(record("Unable to initialize backend 'tpu': INTERNAL: Failed to open "
                                "libtpu.so: libtpu.so: cannot open shared object file"))
  assert drop.filter(record("Unable to initialize backend 'cuda': no CUDA devices"))
  assert drop.filter(record("Unable to initialize backend 'tpu': TPU is in use by pid 7"))
