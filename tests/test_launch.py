"""`python -m launch.main` end to end: outputs, resume, bad input, divergence, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from launch import main as launch_main
from seqjax import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS(["launch.main"])

TINY = dict(hidden_size=4, batch_size=8, num_steps=4, eval_every=2, eval_size=16)
TASK_OPTS = {"binary_addition": dict(seq_len=4), "adding": dict(seq_len=6),
             "seq_length": dict(seq_len=6), "copy": dict(seq_len=4), "reber": dict(seq_len=12),
             "trajectory": dict(seq_len=8), "digits": {}}


def _run(**overrides):
  with flagsaver.flagsaver(**{**TINY, **overrides}):
    launch_main.main(["launch.main"])


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("task", sorted(TASK_OPTS))
@pytest.mark.slow
def test_every_task_runs_end_to_end(task, tmp_path):
  model = "rwa" if task != "copy" else "lstm"
  _run(task=task, model=model, workdir=str(tmp_path), **TASK_OPTS[task])
  config = json.load(open(tmp_path / "config.json"))
  assert config["task"] == task and config["model"] == model and config["num_devices"] == 1
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == [0, 2, 4]
  probe = tasks.get(task, **TASK_OPTS[task])
  assert {"train_loss", "examples_per_sec"} & set(rows[0]) == set()  # the untrained model's
  for r in rows:
    assert {"step", "eval_loss", "wall_time"} <= set(r)
    assert r["step"] == 0 or {"train_loss", "examples_per_sec"} <= set(r)
    assert all(np.isfinite(v) for v in r.values())
    if probe.classification:
      np.testing.assert_allclose(r["eval_perplexity"], np.exp(r["eval_loss"]), rtol=1e-5)
    if probe.feedback_channel is not None:
      assert "eval_free_run_mse" in r and "eval_mse" in r
  assert os.path.getsize(tmp_path / "checkpoint.msgpack") > 0
  with open(tmp_path / "curves.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_task_metrics_are_written(tmp_path):
  expected = {"binary_addition": {"eval_accuracy", "eval_sequence_accuracy", "eval_perplexity"},
              "adding": {"eval_mse"}, "copy": {"eval_accuracy", "eval_bits_per_step"}}
  for task, keys in expected.items():
    workdir = str(tmp_path / task)
    _run(task=task, model="gru", workdir=workdir, num_steps=2, **TASK_OPTS[task])
    assert keys <= set(_rows(workdir)[-1]), (task, _rows(workdir)[-1].keys())


@pytest.mark.slow
def test_resume_ends_exactly_where_an_uninterrupted_run_does(tmp_path):
  opts = dict(task="binary_addition", model="lstm", seq_len=5, eval_every=3)
  _run(workdir=str(tmp_path / "whole"), **{**opts, "num_steps": 9})
  _run(workdir=str(tmp_path / "split"), **{**opts, "num_steps": 5})
  _run(workdir=str(tmp_path / "split"), **{**opts, "num_steps": 9})
  whole, split = _rows(tmp_path / "whole"), _rows(tmp_path / "split")
  assert [r["step"] for r in split] == [0, 3, 5, 6, 9]
  for key in ("eval_loss", "eval_accuracy"):
    assert split[-1][key] == whole[-1][key]
  with open(tmp_path / "whole" / "checkpoint.msgpack", "rb") as a, \
       open(tmp_path / "split" / "checkpoint.msgpack", "rb") as b:
    assert a.read() == b.read()  # same params and optimizer state, bit for bit


@pytest.mark.slow
def test_resume_may_change_unroll_and_remat_and_ends_where_the_whole_run_does(tmp_path):
  opts = dict(task="adding", model="rwa", seq_len=7, eval_every=3)
  _run(workdir=str(tmp_path / "whole"), **{**opts, "num_steps": 6})
  _run(workdir=str(tmp_path / "split"), **{**opts, "num_steps": 3})
  _run(workdir=str(tmp_path / "split"), **{**opts, "num_steps": 6, "unroll": 3, "remat": True})
  whole, split = _rows(tmp_path / "whole"), _rows(tmp_path / "split")
  assert [r["step"] for r in split] == [0, 3, 6]
  np.testing.assert_allclose(split[-1]["eval_loss"], whole[-1]["eval_loss"], rtol=1e-5)
  config = json.load(open(tmp_path / "split" / "config.json"))
  assert config["unroll"] == 3 and config["remat"] is True


@pytest.mark.slow
def test_bfloat16_matmuls_run_close_to_float32_and_are_recorded(tmp_path):
  opts = dict(task="adding", model="lstm", seq_len=6, num_steps=2, eval_every=2)
  _run(workdir=str(tmp_path / "f32"), **opts)
  _run(workdir=str(tmp_path / "bf16"), dtype="bfloat16", **opts)
  assert json.load(open(tmp_path / "bf16" / "config.json"))["dtype"] == "bfloat16"
  f32, bf16 = _rows(tmp_path / "f32")[-1]["eval_loss"], _rows(tmp_path / "bf16")[-1]["eval_loss"]
  assert f32 != bf16 and abs(f32 - bf16) < 0.02 * f32
  with pytest.raises(SystemExit) as e:  # a different precision is a different experiment
    _run(workdir=str(tmp_path / "bf16"), **{**opts, "num_steps": 4})
  assert "--dtype=float32" in str(e.value.code)


@pytest.mark.parametrize("flag,value,message", [
    ("hidden_size", 0, "--hidden_size=0: must be an integer >= 1"),
    ("batch_size", -4, "--batch_size=-4: must be an integer >= 1"),
    ("num_steps", -1, "--num_steps=-1: must be an integer >= 0"),
    ("learning_rate", 0.0, "--learning_rate=0.0: must be a number > 0"),
    ("learning_rate", float("nan"), "--learning_rate=nan"),
    ("eval_every", 0, "--eval_every=0"),
    ("num_layers", 0, "--num_layers=0"),
    ("clip_norm", -1.0, "--clip_norm=-1.0"),
    ("seq_len", 1, "--seq_len=1: must be an int >= 2 for adding"),
    ("prefix_len", 8, "--prefix_len=8: must be below the sequence length 8"),
])
def test_bad_flag_values_exit_with_one_line_and_write_nothing(flag, value, message, tmp_path):
  workdir = tmp_path / "run"
  task = "trajectory" if flag == "prefix_len" else "adding"
  with pytest.raises(SystemExit) as e:
    _run(**{"task": task, "seq_len": 8, "workdir": str(workdir), flag: value})
  text = str(e.value.code)
  assert text.startswith("error: ") and message in text and "\n" not in text
  assert not workdir.exists()


def test_mnist_without_data_dir_is_a_flag_error(tmp_path):
  with pytest.raises(SystemExit) as e:
    _run(task="mnist", workdir=str(tmp_path / "run"))
  assert "--data_dir" in str(e.value.code)
  assert not (tmp_path / "run").exists()


def _cli(*args, **kw):
  return subprocess.run([sys.executable, "-m", "launch.main", *args], cwd=ROOT,
                        capture_output=True, text=True, **kw)


def test_enum_flags_are_checked_by_the_parser(tmp_path):
  out = _cli("--model=transformer", f"--workdir={tmp_path / 'run'}")
  assert out.returncode != 0
  assert "--model" in out.stderr and "transformer" in out.stderr and "rwa" in out.stderr
  assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_changed_experiment_in_the_same_workdir_is_refused(tmp_path):
  _run(task="adding", seq_len=6, model="rwa", workdir=str(tmp_path))
  with pytest.raises(SystemExit) as e:
    _run(task="adding", seq_len=6, model="lstm", workdir=str(tmp_path))
  assert "--model=lstm" in str(e.value.code) and "--model=rwa" in str(e.value.code)


def test_corrupt_checkpoint_is_named_and_left_alone(tmp_path):
  _run(task="adding", seq_len=6, workdir=str(tmp_path))
  ckpt = tmp_path / "checkpoint.msgpack"
  ckpt.write_bytes(b"not a checkpoint")
  with pytest.raises(SystemExit) as e:
    _run(task="adding", seq_len=6, workdir=str(tmp_path), num_steps=8)
  assert str(ckpt) in str(e.value.code) and "\n" not in str(e.value.code)
  assert ckpt.read_bytes() == b"not a checkpoint"


@pytest.mark.slow
def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
  _run(task="adding", seq_len=6, model="rnn", workdir=str(tmp_path), num_steps=2)
  good = (tmp_path / "checkpoint.msgpack").read_bytes()
  with pytest.raises(SystemExit) as e:
    _run(task="adding", seq_len=6, model="rnn", workdir=str(tmp_path), num_steps=40,
         learning_rate=1e38)
  assert "diverged" in str(e.value.code)
  assert (tmp_path / "checkpoint.msgpack").read_bytes() == good


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_the_same_command_resumes(tmp_path):
  args = ["--task=adding", "--seq_len=6", "--hidden_size=4", "--batch_size=8",
          "--num_steps=1000000", "--eval_every=1", "--eval_size=8", f"--workdir={tmp_path}"]
  proc = subprocess.Popen([sys.executable, "-m", "launch.main", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  assert "interrupted at step" in out
  stopped_at = int(out.split("interrupted at step ")[1].split(":")[0])
  resumed = _cli(*[a if not a.startswith("--num_steps") else f"--num_steps={stopped_at + 2}"
                   for a in args], timeout=120)
  assert resumed.returncode == 0, resumed.stderr
  assert f"resuming {tmp_path} from step {stopped_at}" in resumed.stdout
  assert _rows(tmp_path)[-1]["step"] == stopped_at + 2


@pytest.mark.parametrize("task", ["trajectory", "decay"])
@pytest.mark.parametrize("feedback", ["teacher", "free", "scheduled"])
@pytest.mark.slow
def test_feedback_modes_run_end_to_end(task, feedback, tmp_path):
  decay = dict(teacher_forcing_decay_steps=4) if feedback == "scheduled" else {}
  _run(task=task, model="lstm", seq_len=8, feedback=feedback, workdir=str(tmp_path), **decay)
  rows = _rows(tmp_path)
  assert all("eval_free_run_mse" in r and "eval_mse" in r for r in rows)
  if feedback == "scheduled":
    # (none at step 0: the untrained model's row is its evaluation only)
    assert [r.get("teacher_forcing") for r in rows] == [None, 0.5, 0.0]
  else:
    assert all("teacher_forcing" not in r for r in rows)


@pytest.mark.parametrize("overrides,message", [
    (dict(task="adding", feedback="free"), "--feedback=free: applies only to the trajectory, decay tasks"),
    (dict(task="decay", teacher_forcing_decay_steps=-5), "--teacher_forcing_decay_steps=-5"),
    (dict(task="decay", prefix_len=0), "--prefix_len=0"),
    (dict(task="digits", seq_len=100), "--seq_len=100: the digits task has a fixed length 64"),
])
def test_bad_feedback_settings_are_named(overrides, message, tmp_path):
  with pytest.raises(SystemExit) as e:
    _run(workdir=str(tmp_path / "run"), **{"seq_len": 8, **overrides})
  assert message in str(e.value.code)
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compare_runs_every_configuration_and_draws_one_figure(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "launch.compare", "--task=binary_addition", "--seq_len=4",
       "--models=gru", "--num_layers=1,2", "--bit_orders=lsb_first,msb_first",
       "--seeds=0,1",
       "--hidden_size=4", "--batch_size=8", "--num_steps=4", "--eval_every=2", "--eval_size=16",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  groups = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
  assert groups == sorted(f"gru-x{n}-{o}" for n in (1, 2) for o in ("lsb_first", "msb_first"))
  for group in groups:  # each configuration's seeds trained as one group: a subfolder per run
    assert {"s0", "s1", "curves.png", "results.md"} <= {p.name for p in (tmp_path / group).iterdir()}
    for run in ("s0", "s1"):  # each an ordinary run folder, as launch.main writes it
      assert {"config.json", "metrics.jsonl", "checkpoint.msgpack", "curves.png"} <= {
          p.name for p in (tmp_path / group / run).iterdir()}
  table = (tmp_path / "results.md").read_text().splitlines()
  # a row per run, then the spread over seeds: a row per configuration, told apart
  assert len(table) == 2 + 8 + 1 + 2 + 4 and "steps to sequence_accuracy > 0.99" in table[0]
  assert table[10] == "" and "| seeds |" in table[11]
  assert [r.split(" | 2 | ")[0] for r in table[13:]] == [
      f"| {m} | binary_addition ({o}) | 4 | 4" for m in ("gru", "gru x2")
      for o in ("lsb_first", "msb_first")]
  assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.load(open(tmp_path / "gru-x2-msb_first" / "s1" / "config.json"))["num_layers"] == 2
  seed0 = _rows(tmp_path / "gru-x2-msb_first" / "s0")
  seed1 = _rows(tmp_path / "gru-x2-msb_first" / "s1")
  assert seed0[-1]["eval_loss"] != seed1[-1]["eval_loss"]  # seeds really differ


@pytest.mark.slow
def test_the_forgetting_cells_train_on_multi_copy_from_the_command_line(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "launch.compare", "--task=multi_copy", "--num_segments=2",
       "--seq_len=3", "--models=rda,min_rda", "--seeds=0", "--hidden_size=4", "--batch_size=8",
       "--num_steps=4", "--eval_every=2", "--eval_size=16", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  for model in ("rda", "min_rda"):
    config = json.load(open(tmp_path / model / "s0" / "config.json"))
    assert (config["model"], config["task"], config["num_segments"]) == (model, "multi_copy", 2)
    rows = _rows(tmp_path / model / "s0")
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:  # bits per step is the cross-entropy in bits; accuracy a fraction
      np.testing.assert_allclose(r["eval_bits_per_step"], r["eval_loss"] / np.log(2), rtol=1e-5)
      assert 0 <= r["eval_accuracy"] <= 1
    assert rows[1]["train_loss"] != rows[2]["train_loss"]


@pytest.mark.slow
def test_compare_rejects_bad_lists_before_running(tmp_path):
  for flag, message in [("--models=rwa,transformer", "--models=rwa,transformer: unknown cell 'transformer'"),
                        ("--num_layers=1,0", "--num_layers=1,0: must be an integer >= 1"),
                        ("--seeds=a", "--seeds=a"), ("--seeds=1,1", "--seeds=1,1: distinct"),
                        ("--readouts=linear,mlp", "'mlp' is not one of"),
                        ("--models=rwa,lstm,rwa", "--models=rwa,lstm,rwa: rwa is listed twice"),
                        ("--num_layers=2,2", "--num_layers=2,2: 2 is listed twice"),
                        ("--bit_orders=msb_first", "--bit_order=msb_first: applies only to the binary_addition task")]:
    out = subprocess.run([sys.executable, "-m", "launch.compare", "--task=adding", flag,
                          f"--workdir={tmp_path / 'c'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-500:]
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("task", ["seq_length", "trajectory"])
@pytest.mark.slow
def test_inspect_draws_the_state_and_task_pictures(task, tmp_path):
  _run(task=task, model="rwa", workdir=str(tmp_path), **TASK_OPTS[task])
  out = subprocess.run([sys.executable, "-m", "launch.inspect", f"--workdir={tmp_path}",
                        "--num_examples=2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  expected = {"seq_length": ["states.png", "accuracy_by_length.png", "accuracy_by_length.md"],
              "trajectory": ["states.png", "series.png"]}[task]
  for name in expected:
    assert (tmp_path / name).exists(), name
  if task == "seq_length":
    table = (tmp_path / "accuracy_by_length.md").read_text().splitlines()
    counts = [int(line.split("|")[2]) for line in table[2:]]
    assert sum(counts) == TINY["eval_size"]  # every held-out example lands in one bin


def test_inspect_names_a_workdir_without_a_run(tmp_path):
  out = subprocess.run([sys.executable, "-m", "launch.inspect", f"--workdir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "no config.json" in out.stderr and "Traceback" not in out.stderr


def test_mnist_runs_end_to_end_from_a_local_file(tmp_path):
  rng = np.random.default_rng(0)
  data = tmp_path / "data"
  data.mkdir()
  np.savez(data / "mnist.npz", x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
           y_train=rng.integers(0, 10, 30, dtype=np.uint8),
           x_test=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
           y_test=rng.integers(0, 10, 12, dtype=np.uint8))
  _run(task="mnist", model="gru", data_dir=str(data), permute=True, num_steps=2,
       workdir=str(tmp_path / "run"))
  config = json.load(open(tmp_path / "run" / "config.json"))
  assert config["seq_len"] == 784 and config["permute"] is True
  rows = _rows(tmp_path / "run")
  assert rows[-1]["step"] == 2 and 0 <= rows[-1]["eval_accuracy"] <= 1
  # the whole 12-image test split is the eval set: accuracy is a multiple of 1/12
  assert abs(rows[-1]["eval_accuracy"] * 12 - round(rows[-1]["eval_accuracy"] * 12)) < 1e-4
