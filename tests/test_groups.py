"""Many runs in one program: a group's runs against their solo runs, resume, divergence, signals,
bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from flax import serialization

from launch import main as launch_main
from seqjax import cells, experiment, tasks, train, workdir
from seqjax.settings import FIELDS, Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS(["launch.main"])

TINY = Settings(model="lstm", task="binary_addition", seq_len=4, hidden_size=4, batch_size=8,
                num_steps=200, eval_every=50, eval_size=16)
TIMING = ("examples_per_sec", "wall_time")


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _run(s, **changes):
  return experiment.run(dataclasses.replace(s, **changes), log=lambda line: None)


def _assert_same_rows(got, want, rtol=1e-5):
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for key in set(w) - set(TIMING) - {"step"}:
      np.testing.assert_allclose(g[key], w[key], rtol=rtol, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_a_groups_runs_equal_their_solo_runs(tmp_path):
  group = tmp_path / "group"
  _run(TINY, seeds=(0, 1), learning_rates=(0.001, 0.01), workdir=str(group))
  names = sorted(p.name for p in group.iterdir() if p.is_dir())
  assert names == ["lr0.001-s0", "lr0.001-s1", "lr0.01-s0", "lr0.01-s1"]
  for lr, seed in ((0.001, 0), (0.01, 1)):  # both axes of the product vary
    solo = tmp_path / f"solo-{lr}-{seed}"
    _run(TINY, seed=seed, learning_rate=lr, workdir=str(solo))
    sub = group / f"lr{lr:g}-s{seed}"
    _assert_same_rows(_rows(sub), _rows(solo))
    config = json.loads((sub / "config.json").read_text())
    assert config["seed"] == seed and config["learning_rate"] == lr
    assert "seeds" not in config and "learning_rates" not in config
    assert {p.name for p in sub.iterdir()} == {p.name for p in solo.iterdir()}
  assert len(_rows(group / "lr0.01-s1")) == 5  # step 0, then 200 steps evaluated every 50
  assert (group / "curves.png").read_bytes()[:4] == b"\x89PNG"
  table = (group / "results.md").read_text().splitlines()
  assert len(table) == 2 + 4 + 1 + 2 + 2 and table[2].startswith("| lr0.001-s0 | lstm |")
  # then mean ± sample sd over the seeds, a row per learning rate
  assert "final accuracy (mean ± sample sd over seeds)" in table[7]
  assert [r.split(" | ")[4] for r in table[9:]] == ["0.001", "0.01"]


@pytest.mark.slow
def test_a_resumed_group_ends_where_an_uninterrupted_one_does(tmp_path):
  s = dataclasses.replace(TINY, seeds=(3, 5), eval_every=3)
  _run(s, num_steps=9, workdir=str(tmp_path / "whole"))
  _run(s, num_steps=5, workdir=str(tmp_path / "split"))
  _run(s, num_steps=9, workdir=str(tmp_path / "split"))
  for sub in ("s3", "s5"):
    split, whole = _rows(tmp_path / "split" / sub), _rows(tmp_path / "whole" / sub)
    assert [r["step"] for r in split] == [0, 3, 5, 6, 9]
    assert split[-1]["eval_loss"] == whole[-1]["eval_loss"]
    assert (tmp_path / "split" / sub / "checkpoint.msgpack").read_bytes() == \
        (tmp_path / "whole" / sub / "checkpoint.msgpack").read_bytes()


@pytest.mark.slow
def test_a_subfolder_goes_on_alone_as_an_ordinary_run(tmp_path):
  _run(TINY, seeds=(0, 1), learning_rates=(0.003,), num_steps=6, eval_every=3,
       workdir=str(tmp_path / "group"))
  sub = tmp_path / "group" / "lr0.003-s1"
  with flagsaver.flagsaver(task="binary_addition", model="lstm", seq_len=4, hidden_size=4,
                           batch_size=8, eval_size=16, eval_every=3, num_steps=9, seed=1,
                           learning_rate=0.003, workdir=str(sub)):
    launch_main.main(["launch.main"])
  _run(TINY, seed=1, learning_rate=0.003, num_steps=9, eval_every=3, workdir=str(tmp_path / "solo"))
  _assert_same_rows(_rows(sub), _rows(tmp_path / "solo"))


@pytest.mark.slow
def test_a_diverging_run_freezes_alone(tmp_path):
  # lr 1e19: the first update makes the outputs overflow, the second step's loss is inf
  s = dataclasses.replace(TINY, model="rnn", task="adding", seq_len=6, num_steps=8, eval_every=2)
  with pytest.raises(experiment.Diverged) as e:
    _run(s, seeds=(0,), learning_rates=(1e-3, 1e19), workdir=str(tmp_path / "group"))
  # the same run alone stops at the same step, and keeps its step-0 checkpoint too
  with pytest.raises(experiment.RunError) as solo_error:
    _run(s, seed=0, learning_rate=1e19, workdir=str(tmp_path / "solo"))
  at = int(str(solo_error.value).split(" at step ")[1].split(";")[0])
  assert "loss is inf" in str(solo_error.value) and at == 2
  assert f"lr1e+19-s0 at step {at}" in str(e.value) and "1 of 2 runs diverged" in str(e.value)
  bad = tmp_path / "group" / "lr1e+19-s0"
  assert _rows(bad)[1:] == [{"step": at, "diverged_at_step": at}]
  assert _rows(bad)[0]["step"] == 0
  for folder in (bad, tmp_path / "solo"):  # the untrained model's, never written after it
    saved = serialization.msgpack_restore((folder / "checkpoint.msgpack").read_bytes())
    assert saved["step"] == 0
  _run(s, seed=0, learning_rate=1e-3, workdir=str(tmp_path / "good"))
  _assert_same_rows(_rows(tmp_path / "group" / "lr0.001-s0"), _rows(tmp_path / "good"))
  assert "lr1e+19-s0 (diverged at step 2)" in (tmp_path / "group" / "results.md").read_text()
  # it stays frozen: the group's checkpoint holds its state from before the step that failed
  group = serialization.msgpack_restore(
      (tmp_path / "group" / "group_checkpoint.msgpack").read_bytes())
  assert list(group["alive"]) == [True, False]
  assert list(group["runs"]["step"]) == [8, at - 1]
  # and so it does when the group goes on; the other run continues
  with pytest.raises(experiment.Diverged):
    _run(s, seeds=(0,), learning_rates=(1e-3, 1e19), num_steps=10,
         workdir=str(tmp_path / "group"))
  assert _rows(bad)[1:] == [{"step": at, "diverged_at_step": at}]
  _run(s, seed=0, learning_rate=1e-3, num_steps=10, workdir=str(tmp_path / "good"))
  _assert_same_rows(_rows(tmp_path / "group" / "lr0.001-s0"), _rows(tmp_path / "good"))


def test_every_setting_is_a_flag_with_the_settings_default():
  for name, field in FIELDS.items():
    if name == "task_options":  # a flag per option instead, below
      continue
    assert FLAGS[name].default == field.default, name
    assert field.metadata["help"] in FLAGS[name].help, name
    if field.metadata["choices"] is not None:
      assert set(FLAGS[name].parser.enum_values) == set(field.metadata["choices"]), name


def test_every_task_option_is_a_flag_given_only_when_set():
  # default None (not given), the declaration's help, the tasks that take it, and an enum of
  # every task's allowed values where it has some
  assert "task_options" not in FLAGS and set(tasks.BUILTIN_OPTIONS) >= {
      "bit_order", "num_segments", "data_rules", "permute", "eval_split", "data_dir",
      "prefix_len", "feedback", "teacher_forcing_decay_steps"}
  for name, declared in tasks.BUILTIN_OPTIONS.items():
    assert FLAGS[name].default is None, name
    assert f"Only for: {', '.join(declared)}." in FLAGS[name].help, name
    assert len({o.kind for o in declared.values()}) == 1, name
    for option in declared.values():
      assert option.help in FLAGS[name].help and name not in FIELDS, name
      if option.choices is not None:
        assert set(option.choices) <= set(FLAGS[name].parser.enum_values), name
        assert option.default is None or option.default in option.choices, name  # None: the task chooses
    if all(o.choices is None for o in declared.values()):
      assert not hasattr(FLAGS[name].parser, "enum_values"), name
  # --model and --task also take MODULE:NAME, so they are plain strings checked by the runner
  assert FIELDS["model"].metadata["choices"] is None and FIELDS["task"].metadata["choices"] is None
  assert not hasattr(FLAGS["model"].parser, "enum_values")


def _main(**overrides):
  opts = dict(hidden_size=4, batch_size=8, num_steps=2, eval_every=2, eval_size=16, seq_len=6)
  with flagsaver.flagsaver(**{**opts, **overrides}):
    launch_main.main(["launch.main"])


@pytest.mark.parametrize("overrides,message", [
    (dict(seeds=["0", "1", "0"]), "--seeds=0,1,0: distinct integers >= 0"),
    (dict(seeds=["-1"]), "--seeds=-1: distinct integers >= 0"),
    (dict(seeds=["a"]), "--seeds=a: a comma-separated list of integers"),
    (dict(learning_rates=["0.1", "0"]), "--learning_rates=0.1,0: distinct numbers > 0"),
    (dict(learning_rates=["-0.001"]), "--learning_rates=-0.001: distinct numbers > 0"),
    (dict(learning_rates=["0.1", "0.1"]), "--learning_rates=0.1,0.1: distinct numbers > 0"),
    (dict(learning_rates=["0.001", "0.0010000001"]),
     "0.001 and 0.0010000001 give the same folders lr0.001-s<seed>"),
    (dict(seed=1, seeds=["0", "1"]), "--seeds=0,1: give --seed or --seeds, not both"),
    (dict(learning_rate=0.1, learning_rates=["0.1", "0.2"]),
     "--learning_rates=0.1,0.2: give --learning_rate or --learning_rates, not both"),
    (dict(task="adding", permute=True), "--permute=True: applies only to the digits, mnist tasks"),
    (dict(task="copy", bit_order="msb_first"),
     "--bit_order=msb_first: applies only to the binary_addition task"),
    (dict(task="adding", data_dir="/tmp"),
     "--data_dir=/tmp: applies only to the mnist, uea, text tasks"),
    (dict(task="reber", feedback="free"),
     "--feedback=free: applies only to the trajectory, decay tasks"),
    (dict(task="adding", prefix_len=2), "--prefix_len=2: applies only to the trajectory, decay"),
    (dict(task="decay", teacher_forcing_decay_steps=5),
     "--teacher_forcing_decay_steps=5: applies only to --feedback=scheduled"),
    (dict(task="digits", permute=True, seeds=["0", "0"]), "--seeds=0,0"),
    # given for a task that does not take it: refused even at its default value
    (dict(task="adding", permute=False), "--permute=False: applies only to the digits, mnist"),
    (dict(task="copy", bit_order="lsb_first"),
     "--bit_order=lsb_first: applies only to the binary_addition task"),
    (dict(task="reber", feedback="teacher"),
     "--feedback=teacher: applies only to the trajectory, decay tasks"),
    (dict(task="multi_copy", data_rules="paper"),
     "--data_rules=paper: applies only to the seq_length, reber tasks"),
    (dict(task="nosuch", data_dir="/tmp"), "--task=nosuch: unknown task 'nosuch'; allowed: "),
    # a task's own check of seq_len (an OptionError) is the flag's line
    (dict(task="reber", seq_len=3), "--seq_len=3: must be an int >= 5 for reber (the shortest"),
    (dict(task="trajectory", seq_len=51), "--seq_len=51: must be <= 50 for trajectory"),
])
def test_bad_group_and_inapplicable_flags_exit_with_one_line_and_write_nothing(
    overrides, message, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as e:
    _main(workdir=str(workdir), **overrides)
  text = str(e.value.code)
  assert text.startswith("error: ") and message in text and "\n" not in text, text
  assert not workdir.exists()


@pytest.mark.slow
def test_only_the_settings_that_apply_are_recorded(tmp_path):
  _main(task="adding", workdir=str(tmp_path / "a"))
  config = json.loads((tmp_path / "a" / "config.json").read_text())
  for name in ("permute", "bit_order", "data_dir", "feedback", "prefix_len",
               "teacher_forcing_decay_steps", "seeds", "learning_rates"):
    assert name not in config, name
  _main(task="decay", feedback="scheduled", teacher_forcing_decay_steps=7,
        workdir=str(tmp_path / "d"))
  config = json.loads((tmp_path / "d" / "config.json").read_text())
  assert config["teacher_forcing_decay_steps"] == 7 and config["prefix_len"] == 3


def _cli(*args):
  return subprocess.Popen([sys.executable, "-m", "launch.main", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(metrics, n, deadline=120):
  end = time.time() + deadline
  while time.time() < end and not (metrics.exists() and metrics.read_text().count("\n") >= n):
    time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_checkpoints_the_group_and_the_same_command_resumes(tmp_path):
  args = ["--task=adding", "--seq_len=6", "--hidden_size=4", "--batch_size=8", "--seeds=0,1",
          "--num_steps=1000000", "--eval_every=1", "--eval_size=8", f"--workdir={tmp_path}"]
  proc = _cli(*args)
  _wait_for_rows(tmp_path / "s1" / "metrics.jsonl", 3)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  stopped_at = int(out.split("interrupted at step ")[1].split(":")[0])
  resumed = _cli(*[a if not a.startswith("--num_steps") else f"--num_steps={stopped_at + 2}"
                   for a in args])
  out, err = resumed.communicate(timeout=120)
  assert resumed.returncode == 0, err[-2000:]
  assert f"resuming {tmp_path} from step {stopped_at}" in out
  for sub in ("s0", "s1"):
    assert _rows(tmp_path / sub)[-1]["step"] == stopped_at + 2


@pytest.mark.slow
def test_a_run_resumed_alone_keeps_its_rate_and_the_group_will_not_overwrite_it(tmp_path):
  group = tmp_path / "group"
  _run(TINY, seeds=(0,), learning_rates=(0.003,), num_steps=2, eval_every=1, workdir=str(group))
  sub = group / "lr0.003-s0"
  # no --learning_rate: it goes on at the rate it was trained with, as the solo run at 0.003 does
  _run(TINY, seed=0, num_steps=3, eval_every=1, workdir=str(sub))
  assert json.loads((sub / "config.json").read_text())["learning_rate"] == 0.003
  _run(TINY, seed=0, learning_rate=0.003, num_steps=3, eval_every=1, workdir=str(tmp_path / "solo"))
  _assert_same_rows(_rows(sub), _rows(tmp_path / "solo"))
  # resuming the group would cut it back to step 2: refused before anything is written
  before = {p.name: p.read_bytes() for p in sub.iterdir()}
  group_ckpt = (group / "group_checkpoint.msgpack").read_bytes()
  with pytest.raises(experiment.RunError) as e:
    _run(TINY, seeds=(0,), num_steps=4, eval_every=1, workdir=str(group))
  assert str(e.value) == (f"{sub} was continued alone to step 3, past the group's step 2; "
                          "resume it alone or use another --workdir")
  assert {p.name: p.read_bytes() for p in sub.iterdir()} == before
  assert (group / "group_checkpoint.msgpack").read_bytes() == group_ckpt
  # an explicit other rate is taken (Adam's state does not depend on it) and said
  lines = []
  experiment.run(dataclasses.replace(TINY, seed=0, learning_rate=0.001, num_steps=4,
                                     eval_every=1, workdir=str(sub)), log=lines.append)
  assert json.loads((sub / "config.json").read_text())["learning_rate"] == 0.001
  assert f"--learning_rate=0.001: {sub} was trained at 0.003; it goes on at 0.001" in lines[0]
  saved = serialization.msgpack_restore((sub / "checkpoint.msgpack").read_bytes())
  np.testing.assert_allclose(saved["opt_state"]["hyperparams"]["learning_rate"], 0.001)


def test_a_run_diverging_at_its_first_steps_keeps_its_step_0_checkpoint(tmp_path):
  s = dataclasses.replace(TINY, model="rnn", task="adding", seq_len=6, num_steps=4,
                          eval_every=100, workdir=str(tmp_path))
  with pytest.raises(experiment.RunError) as e:
    _run(s, learning_rate=1e30)
  assert "the last good checkpoint (step 0, in" in str(e.value)
  # what is left: the untrained model's evaluation and checkpoint, a run to resume
  (row,) = _rows(tmp_path)
  assert row["step"] == 0 and "train_loss" not in row
  assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 1e30
  with pytest.raises(experiment.RunError, match="--clip_norm=1.0: .* with --clip_norm=0.0;"):
    _run(s, clip_norm=1.0, learning_rate=1e-3)
  _run(s, num_steps=2, eval_every=2, learning_rate=1e-3)  # goes on more gently from step 0
  assert [r["step"] for r in _rows(tmp_path)] == [0, 2]


@pytest.mark.parametrize("where", ["file", "under_a_file", "uncreatable"])
@pytest.mark.parametrize("group", [False, True])
def test_a_bad_workdir_is_one_line_and_nothing_is_written(where, group, tmp_path):
  (tmp_path / "f").write_text("mine")
  workdir = {"file": tmp_path / "f", "under_a_file": tmp_path / "f" / "run",
             "uncreatable": "/proc/seqjax-test-run"}[where]
  with pytest.raises(SystemExit) as e:
    _main(workdir=str(workdir), **({"seeds": ["0", "1"]} if group else {}))
  text = str(e.value.code)
  assert text.startswith(f"error: --workdir={workdir}: ") and "\n" not in text, text
  assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "mine"


@pytest.mark.slow
def test_a_run_diverged_at_evaluation_is_frozen_on_the_device_too(tmp_path, monkeypatch):
  real = train.make_group_evaluate

  def run_1_eval_is_nan(*args, **kwargs):
    evaluate = real(*args, **kwargs)  # jitted: the runner compiles it ahead
    return jax.jit(lambda params, held_out: dict(evaluate(params, held_out), loss=evaluate(
        params, held_out)["loss"].at[1].set(np.nan)))

  monkeypatch.setattr(train, "make_group_evaluate", run_1_eval_is_nan)
  with pytest.raises(experiment.Diverged) as e:
    _run(TINY, seeds=(0, 1), num_steps=4, eval_every=2, workdir=str(tmp_path))
  # its evaluation is NaN from the first one on, the untrained model's (step 0)
  assert "s1 at step 0" in str(e.value)
  group = serialization.msgpack_restore((tmp_path / "group_checkpoint.msgpack").read_bytes())
  assert list(group["alive"]) == [True, False] and list(group["runs"]["step"]) == [4, 0]


def _finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_a_non_finite_update_freezes_the_run_at_its_last_finite_state(tmp_path, monkeypatch):
  # lr inf: the first loss is finite, the params after the update are not
  cfg = train.Config(cell=cells.get("lstm", hidden_size=4), task=tasks.get("binary_addition",
                     seq_len=4), optimizer=train.make_optimizer(1e-3), batch_size=8)
  runs = [train.init_state(cfg, train.param_key(s)) for s in (0, 1)]
  stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *runs)
  stacked = train.set_learning_rate(stacked, np.array([1e-3, np.inf], np.float32))
  before = jax.tree.map(np.asarray, stacked)
  state, metrics = train.make_group_step(cfg, 2)(train.GroupState(stacked, np.ones(2, bool)),
                                                 np.array([0, 1], np.int32))
  assert np.isfinite(metrics["loss"]).all() and list(metrics["finite"]) == [True, False]
  assert list(state.alive) == [True, False] and list(state.runs.step) == [1, 0]
  jax.tree.map(lambda got, want: np.testing.assert_array_equal(got[1], want[1]), state.runs.params,
               before.params)
  # the runner marks it diverged, and the group checkpoint holds its finite state
  real = workdir.train.set_learning_rate
  monkeypatch.setattr(workdir.train, "set_learning_rate",
                      lambda runs, rates: real(runs, np.array([rates[0], np.inf], np.float32)))
  with pytest.raises(experiment.Diverged) as e:
    _run(TINY, seeds=(0, 1), num_steps=2, eval_every=2, workdir=str(tmp_path))
  assert "s1 at step 1" in str(e.value)
  group = serialization.msgpack_restore((tmp_path / "group_checkpoint.msgpack").read_bytes())
  assert list(group["alive"]) == [True, False] and list(group["runs"]["step"]) == [2, 0]
  assert _finite(group["runs"]["params"])
